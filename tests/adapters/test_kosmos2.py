"""The Kosmos-2 adapter against the model itself, on the tiny checkpoint built in code.

Exactness tests run Kosmos2ForConditionalGeneration on inputs made by its own Kosmos2Processor and compare with
what it hands its text model (`image_embeds`, captured by a forward pre-hook) and with what the text model then
builds from it (the embed_scale-multiplied inputs at the image and text positions).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from spatialbench.adapters import loading
from spatialbench.adapters.tiny.builds import materialise
from spatialbench.adapters.tiny import IMAGE_SIZE
from spatialbench.adapters.families import get_family
from spatialbench.adapters.kosmos2 import EMBED_KEY, EXTRACTION_PREFIXES, Kosmos2Adapter, shape_at
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import ModelCard
from spatialbench.testing import run_checks

CARD = ModelCard(name="kosmos2-tiny", family="kosmos2", checkpoint="tiny:kosmos2-tiny")
POINTS = ("resampler", "projected", "vision_patches")
DECODER = ("text_model.model.layers.", "text_model.model.layer_norm.", "text_model.lm_head.")
TEXTS = ["what is left of the red circle", "where is the blue square in image"]  # same word count


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kosmos2_tiny_dir(tiny_cache) -> Path:
    return materialise("kosmos2-tiny", tiny_cache)


@pytest.fixture(scope="module")
def kosmos2_tiny(tiny_cache, kosmos2_tiny_dir):
    cache: dict[str, Kosmos2Adapter] = {}

    def load(point: str = "projected", *, fresh: bool = False, card: ModelCard = CARD) -> Kosmos2Adapter:
        if fresh or card is not CARD:
            return Kosmos2Adapter.load(card, cache_dir=tiny_cache, point=point)
        if point not in cache:
            cache[point] = Kosmos2Adapter.load(card, cache_dir=tiny_cache, point=point)
        return cache[point]

    return load


@pytest.fixture(scope="module")
def kosmos2_full(kosmos2_tiny_dir):
    from transformers import Kosmos2ForConditionalGeneration

    return Kosmos2ForConditionalGeneration.from_pretrained(kosmos2_tiny_dir).eval()


@pytest.fixture(scope="module")
def processor(kosmos2_tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(kosmos2_tiny_dir)


def images(n: int = 5) -> list[Image.Image]:
    """Noise and drawn shapes at several sizes (resize and centre crop are part of what is compared)."""
    out = []
    for i, size in enumerate([(80, 80), (224, 224), (150, 97), (64, 64), (97, 150), (120, 120)][:n]):
        rng = np.random.default_rng(i)
        if i % 2:
            out.append(Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB"))
            continue
        img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
        x, y = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
        ImageDraw.Draw(img).rectangle((x, y, x + size[0] // 3, y + size[1] // 3), fill=(230, 20, 20))
        out.append(img)
    return out


def square_scenes(n: int = 8, size: int = 224) -> list[Image.Image]:
    """One coloured square at a different place on a grey background, like the synthetic tasks."""
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 210, 20)]
    side, out = size // 4, []
    for i in range(n):
        img = Image.new("RGB", (size, size), (128, 128, 128))
        x, y = (i % 4) * side, ((i // 4) % 2 * 2 + i % 2) * side
        ImageDraw.Draw(img).rectangle((x, y, x + side - 1, y + side - 1), fill=colours[i % 4])
        out.append(img)
    return out


def run_full_model(model, processor, imgs, texts, pixel_values=None):
    """Run the real model on the processor's own inputs; capture what reaches and what enters the text model."""
    q = model.config.latent_query_num
    enc = processor(images=imgs, text=texts, return_tensors="pt", num_image_tokens=q)
    px = enc["pixel_values"] if pixel_values is None else pixel_values
    captured = {}
    text_model = model.text_model.model
    hooks = [
        model.text_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("image_embeds", kw["image_embeds"].detach().clone()),
            with_kwargs=True),
        model.image_to_text_projection.register_forward_pre_hook(
            lambda m, a: captured.__setitem__("features", a[0].detach().clone())),
        model.image_to_text_projection.register_forward_hook(
            lambda m, a, out: captured.__setitem__("projection", out[0].detach().clone())),
        # embed_positions reads the scaled embeddings (image and text), just before the decoder layers
        text_model.embed_positions.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("scaled", kw["inputs_embeds"].detach().clone()), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  image_embeds_position_mask=enc["image_embeds_position_mask"])
    finally:
        for h in hooks:
            h.remove()
    captured["mask"] = enc["image_embeds_position_mask"].bool()
    captured["input_ids"] = enc["input_ids"]
    captured["embed_scale"] = text_model.embed_scale
    return captured


# ------------------------------------------------------------------------------------------- exactness


def test_preprocess_matches_the_processor(kosmos2_tiny, processor):
    adapter = kosmos2_tiny()
    imgs = images()
    got = adapter.preprocess(imgs)
    assert got.shape == (len(imgs), 3, IMAGE_SIZE, IMAGE_SIZE) and got.dtype == torch.float32
    assert torch.equal(got, processor(images=imgs, return_tensors="pt")["pixel_values"])


@pytest.mark.parametrize("point", ["projected", "resampler"])
def test_prompt_is_exactly_the_image_embeds_the_text_model_reads(kosmos2_tiny, kosmos2_full, processor, point):
    adapter = kosmos2_tiny(point)
    imgs = images()
    px = adapter.preprocess(imgs)
    cap = run_full_model(kosmos2_full, processor, imgs, [TEXTS[i % 2] for i in range(len(imgs))])
    prompt = adapter.visual_prompt(px)
    assert prompt.shape == (len(imgs), 8, 48)
    assert torch.equal(prompt, cap["image_embeds"])
    assert torch.equal(prompt, cap["projection"])  # the resampler's own output: the same tensor here
    # what the text model builds from it: written at the image positions, then multiplied by embed_scale
    assert cap["embed_scale"] != 1.0
    assert torch.equal(cap["scaled"][cap["mask"]], (prompt * cap["embed_scale"]).flatten(0, 1))
    # and the two halves are right on their own
    assert torch.equal(adapter.resample(adapter.vision_features(px)), prompt)


def test_vision_patches_are_the_features_the_projection_reads(kosmos2_tiny, kosmos2_full, processor):
    adapter = kosmos2_tiny("vision_patches")
    imgs = images(3)
    px = adapter.preprocess(imgs)
    cap = run_full_model(kosmos2_full, processor, imgs, TEXTS[:1] * 3)
    feats = adapter.visual_prompt(px)
    assert feats.shape == (3, 65, 32)
    assert torch.equal(feats, cap["features"])
    assert torch.equal(feats, adapter.vision_features(px))
    # post_layernorm then L2 normalisation, not the raw last_hidden_state
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(3, 65))
    with torch.no_grad():
        raw = kosmos2_full.vision_model(pixel_values=px).last_hidden_state
    assert not torch.allclose(raw, feats)


def test_projection_attention_implementation_is_the_full_models(kosmos2_tiny, kosmos2_full):
    ours = kosmos2_tiny().parts.image_to_text_projection.x_attn.config._attn_implementation
    assert ours == kosmos2_full.image_to_text_projection.x_attn.config._attn_implementation
    assert ours is not None


def test_embed_text_is_the_models_own_input_embedding_of_the_text_it_reads(kosmos2_tiny, kosmos2_full, processor):
    adapter = kosmos2_tiny()
    emb, mask = adapter.embed_text(TEXTS)
    ids = adapter.tokenizer(TEXTS, padding=True, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert (ids != adapter.tokenizer.unk_token_id).all(), "test texts must be in the tiny vocabulary"
    assert emb.shape == (2, ids.shape[1], adapter.text_dim) and mask.bool().all()
    with torch.no_grad():
        assert torch.equal(emb, kosmos2_full.get_input_embeddings()(ids))

    # the processor lays out <s> <image> [8 slots] </image> text: the text tokens are the ones embed_text uses
    cap = run_full_model(kosmos2_full, processor, images(2), TEXTS)
    n = ids.shape[1]
    assert torch.equal(cap["input_ids"][:, -n:], ids)
    assert torch.equal(cap["scaled"][:, -n:], emb * cap["embed_scale"])


def test_embed_text_masks_padding(kosmos2_tiny):
    adapter = kosmos2_tiny()
    texts = ["left", "what is left of the red circle"]
    emb, mask = adapter.embed_text(texts)
    assert emb.shape[:2] == mask.shape == (2, 7)
    assert mask[0].sum() == 1 and mask[1].all()
    assert torch.equal(emb[0, mask[0].bool()], adapter.embed_text(["left"])[0][0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_is_exactly_what_the_text_model_reads(kosmos2_tiny, kosmos2_tiny_dir, processor, dtype):
    from transformers import Kosmos2ForConditionalGeneration

    card = CARD.model_copy(update={"dtype": str(dtype).removeprefix("torch.")})
    adapter, patches = kosmos2_tiny("projected", card=card), kosmos2_tiny("vision_patches", card=card)
    model = Kosmos2ForConditionalGeneration.from_pretrained(kosmos2_tiny_dir, dtype=dtype).eval()
    imgs = images(3)
    px = adapter.preprocess(imgs)
    assert px.dtype == dtype
    cap = run_full_model(model, processor, imgs, TEXTS[:1] * 3, pixel_values=px)
    prompt = adapter.visual_prompt(px)
    assert prompt.dtype == cap["image_embeds"].dtype == dtype
    assert torch.equal(prompt, cap["image_embeds"])
    assert torch.equal(patches.visual_prompt(px), cap["features"])
    assert adapter.embed_text(TEXTS)[0].dtype == dtype


def test_reference_prompts_agree_with_the_adapter_at_every_point(kosmos2_tiny):
    px = kosmos2_tiny().preprocess(images(3))
    reference = kosmos2_tiny().reference_prompts(px)
    assert set(reference) == {*POINTS, *kosmos2_tiny().layers}
    for point in POINTS:
        assert torch.equal(kosmos2_tiny(point).visual_prompt(px), reference[point])


@pytest.fixture(scope="module")
def checks(tiny_cache):
    return run_checks(CARD, cache_dir=tiny_cache)


def test_conformance_check_passes(checks):
    failed = [c for c in checks if c.status == "fail"]
    assert not failed, failed
    assert checks[0].status == "pass" and "resampler, projected, vision_patches" in checks[0].detail


def test_layers_are_the_vision_blocks_and_the_one_cross_attention_bit_equal_to_the_model(kosmos2_tiny, checks):
    layers = ["vision.1", "vision.2", "resampler.1"]
    check = next(c for c in checks if c.name.startswith("every declared layer"))
    assert (check.status, check.detail) == ("pass", f"bit-equal at {', '.join(layers)}")
    adapter = kosmos2_tiny("resampler")
    assert adapter.layers == layers
    got = adapter.prompts_at(adapter.preprocess(images(3)), ["resampler", "vision_patches", *layers])
    assert all(got[n].shape == (3, *adapter.shape_at(n)) for n in layers)
    assert [adapter.shape_at(n) for n in layers] == [(65, 32), (65, 32), (8, 48)]
    assert torch.equal(got["resampler.1"], got["resampler"])  # the resampler's one layer is its output
    with torch.no_grad():  # the last block, CLS kept, is what vision_patches normalises
        assert torch.equal(torch.nn.functional.normalize(
            adapter.parts.vision_model.model.post_layernorm(got["vision.2"]), dim=-1), got["vision_patches"])


# ------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", POINTS)
def test_different_images_give_different_prompts(kosmos2_tiny, point):
    prompts = kosmos2_tiny(point).visual_prompt(kosmos2_tiny(point).preprocess(square_scenes(8)))
    flat = prompts.flatten(1)
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert not torch.allclose(flat[i], flat[j], atol=1e-6), f"images {i} and {j} give the same prompt"
    within = flat.std(dim=1).mean()
    ratio = (prompts.std(dim=0).mean() / within).item()
    assert ratio > 0.05, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"
    assert (prompts.std(dim=1).mean() / within).item() > 0.05, "all prompt rows are alike"


# ------------------------------------------------------------------------------- selective loading


def index_of(checkpoint_dir: Path) -> dict[str, str]:
    return json.loads((checkpoint_dir / loading.INDEX).read_text())["weight_map"]


def test_tiny_checkpoint_layout(kosmos2_tiny_dir, processor):
    from transformers import AutoConfig

    assert len(list(kosmos2_tiny_dir.glob("model-*.safetensors"))) > 1
    assert not (kosmos2_tiny_dir / loading.SINGLE).exists()
    config = AutoConfig.from_pretrained(kosmos2_tiny_dir)
    assert processor.num_patch_index_tokens == 16
    assert "<patch_index_0015>" in processor.tokenizer.get_vocab()
    assert "<patch_index_0016>" not in processor.tokenizer.get_vocab()
    assert config.text_config.vocab_size >= len(processor.tokenizer)
    assert processor.tokenizer.bos_token_id == config.text_config.bos_token_id
    # like the real tokenizer it adds <s> ... </s> unless told not to (so embed_text's choice is tested)
    tok = processor.tokenizer
    assert tok(TEXTS[0])["input_ids"] == [tok.bos_token_id, *tok(TEXTS[0], add_special_tokens=False)["input_ids"],
                                          tok.eos_token_id]


def test_loaded_keys_are_the_extraction_tensors_and_the_embedding_table_only(kosmos2_tiny, kosmos2_tiny_dir):
    weight_map = index_of(kosmos2_tiny_dir)
    extraction = {k for k in weight_map if k.startswith(EXTRACTION_PREFIXES)}
    assert {k.split(".")[0] for k in extraction} == {"vision_model", "image_to_text_projection"}
    assert kosmos2_tiny().loaded_keys == extraction | {EMBED_KEY}
    assert not [k for k in kosmos2_tiny().loaded_keys if k.startswith(DECODER)]


def test_decoder_layers_never_read_and_decoder_only_shards_never_opened(kosmos2_tiny, kosmos2_tiny_dir, monkeypatch):
    real, log = loading.safe_open, {"opened": [], "read": []}

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            log["read"].append(name)
            return self.inner.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    def recording_open(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return Recording(real(path, *args, **kwargs))

    monkeypatch.setattr(loading, "safe_open", recording_open)
    adapter = kosmos2_tiny(fresh=True)
    assert set(log["read"]) == adapter.loaded_keys
    assert not [k for k in log["read"] if k.startswith("text_model.") and k != EMBED_KEY]
    by_shard: dict[str, set[str]] = {}
    for key, shard in index_of(kosmos2_tiny_dir).items():
        by_shard.setdefault(shard, set()).add(key)
    decoder_only = {s for s, keys in by_shard.items() if all(k.startswith(DECODER) for k in keys)}
    assert decoder_only, "the tiny checkpoint should have a shard holding decoder layers only"
    assert not decoder_only & set(log["opened"])


def test_embedding_key_is_the_text_models_input_embedding():
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    config = Kosmos2Config(text_config=dict(embed_dim=16, layers=1, ffn_dim=16, attention_heads=2, vocab_size=30),
                           vision_config=dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=16, patch_size=8), latent_query_num=2)
    with torch.device("meta"):
        model = Kosmos2ForConditionalGeneration(config)
    table = model.get_input_embeddings()
    assert EMBED_KEY == next(f"{n}.weight" for n, m in model.named_modules() if m is table)


def test_a_checkpoint_of_another_family_is_a_clear_error(tmp_path, tiny_cache):
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig

    CLIPVisionConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1).save_pretrained(tmp_path)
    save_file({"vision_model.post_layernorm.weight": torch.ones(8)}, str(tmp_path / loading.SINGLE))
    card = ModelCard(name="wrong", family="kosmos2", checkpoint=str(tmp_path))
    with pytest.raises(SpatialbenchError, match="not Kosmos-2"):
        Kosmos2Adapter.load(card, cache_dir=tiny_cache)


# ------------------------------------------------------------------------------------ shapes, params


@pytest.mark.parametrize("point", POINTS)
def test_shape_at_is_the_actual_shape_and_dtype(kosmos2_tiny, point):
    adapter = kosmos2_tiny(point)
    prompt = adapter.visual_prompt(adapter.preprocess(images(3)))
    assert prompt.shape == (3, *adapter.prompt_shape) == (3, *shape_at(adapter.config, point))
    assert prompt.dtype == adapter.prompt_dtype == torch.float32
    assert adapter.text_dim == 48


@pytest.mark.parametrize("point", POINTS)
def test_resampler_parameters_are_the_projection_and_all_of_it_moves(kosmos2_tiny, point):
    adapter = kosmos2_tiny(point, fresh=True)  # requires_grad is switched on below
    params = adapter.resampler_parameters()
    ids = {id(p) for p in params}
    assert len(ids) == len(params) and all(isinstance(p, torch.nn.Parameter) for p in params)
    vision = {id(p) for p in adapter.parts.vision_model.parameters()}
    projection = {id(p) for p in adapter.parts.image_to_text_projection.parameters()}
    assert vision and not vision & ids and id(adapter.embeddings.weight) not in ids
    if point == "vision_patches":
        assert ids == set()
        return
    # the projection IS the resampler here: dense, latent_query and x_attn, at both points
    assert ids == projection and id(adapter.parts.image_to_text_projection.latent_query) in ids

    everything = adapter.parameters()
    assert {id(p) for p in everything} == vision | projection | {id(adapter.embeddings.weight)}
    with torch.no_grad():
        feats = adapter.vision_features(adapter.preprocess(images(3)))
    for p in everything:
        p.requires_grad_(True)
    adapter.resample(feats.detach()).sum().backward()
    got_grad = {id(p) for p in everything if p.grad is not None and p.grad.abs().sum() > 0}
    assert got_grad == ids


# ----------------------------------------------------------------------------- real size, on meta


def test_real_checkpoint_shapes_on_meta():
    """microsoft/kosmos-2-patch14-224, hyperparameters as published, built on meta and run to the text model."""
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration

    config = Kosmos2Config(
        latent_query_num=64,
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu"),
        text_config=dict(embed_dim=2048, layers=24, ffn_dim=8192, attention_heads=32, vocab_size=65037,
                         max_position_embeddings=2048, scale_embedding=True),
    )
    with torch.device("meta"):
        model = Kosmos2ForConditionalGeneration(config)
    captured = {}

    class Stop(Exception):
        pass

    def at_text_model(module, args, kwargs):
        captured["projected"] = kwargs["image_embeds"]
        raise Stop  # the prompt has arrived: the 1.3B text model need not run

    model.text_model.register_forward_pre_hook(at_text_model, with_kwargs=True)
    model.image_to_text_projection.register_forward_pre_hook(lambda m, a: captured.__setitem__("vision", a[0]))
    ids = torch.zeros(2, 67, dtype=torch.long, device="meta")
    with pytest.raises(Stop):
        model(pixel_values=torch.empty(2, 3, 224, 224, device="meta"), input_ids=ids, image_embeds_position_mask=ids)

    assert tuple(captured["projected"].shape) == (2, *shape_at(config, "projected")) == (2, 64, 2048)
    assert shape_at(config, "resampler") == shape_at(config, "projected")
    assert tuple(captured["vision"].shape) == (2, *shape_at(config, "vision_patches")) == (2, 257, 1024)
    vision = sum(p.numel() for p in model.vision_model.parameters())
    projection = sum(p.numel() for p in model.image_to_text_projection.parameters())
    assert 300e6 < vision < 310e6 and 18e6 < projection < 20e6


# ------------------------------------------------------------------------------ batch, determinism


@pytest.mark.parametrize("point", POINTS)
def test_batch_invariance_and_determinism(kosmos2_tiny, point):
    adapter = kosmos2_tiny(point)
    imgs = images(4)
    batch = adapter.visual_prompt(adapter.preprocess(imgs))
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im])) for im in imgs])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert torch.equal(batch, adapter.visual_prompt(adapter.preprocess(imgs)))
    assert not batch.requires_grad


# ---------------------------------------------------------------------------------- fingerprint, registry


def test_fingerprint(kosmos2_tiny):
    first = kosmos2_tiny("projected", fresh=True).fingerprint()
    assert first == kosmos2_tiny("projected").fingerprint()
    assert first.startswith("kosmos2|local:") and first.endswith("|projected|float32")
    assert kosmos2_tiny("resampler").fingerprint() != first


def test_family_registry_and_cards():
    from spatialbench.registry import load_spec

    assert get_family("kosmos2") is Kosmos2Adapter and Kosmos2Adapter.points == POINTS
    root = Path(__file__).parents[2] / "models"
    tiny_card, real_card = load_spec(root / "kosmos2-tiny.yaml", ModelCard), load_spec(root / "kosmos2.yaml", ModelCard)
    assert tiny_card.family == real_card.family == "kosmos2"
    assert tiny_card.checkpoint == "tiny:kosmos2-tiny" and real_card.checkpoint == "microsoft/kosmos-2-patch14-224"
