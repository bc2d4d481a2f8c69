"""The LLaVA adapter against the model itself, on the tiny checkpoint built in code.

Exactness tests compare with what LlavaForConditionalGeneration feeds its language model (and what its
projector reads), captured with hooks while the model runs its own forward on LlavaProcessor inputs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

from spatialbench.adapters import loading
from spatialbench.adapters.families import get_family
from spatialbench.adapters.llava import LlavaAdapter, LlavaParts, shape_at
from spatialbench.adapters.tiny import IMAGE_SIZE
from spatialbench.adapters.tiny.builds import materialise
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry
from spatialbench.specs import ModelCard

from .helpers import RecordingHandle

CARD = ModelCard(name="llava-tiny", family="llava", checkpoint="tiny:llava-tiny")
POINTS = ("projected", "vision_patches")
Q = (IMAGE_SIZE // 8) ** 2  # 64 patch tokens, CLS dropped
EMBED_KEY = "language_model.model.embed_tokens.weight"  # as save_pretrained writes it
TEXTS = ["what is left of the red circle", "where is the blue square in image"]  # same word count


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def llava_dir(tiny_cache) -> Path:
    return materialise("llava-tiny", tiny_cache)


@pytest.fixture(scope="module")
def llava_tiny(tiny_cache, llava_dir):
    cache: dict[tuple, LlavaAdapter] = {}

    def load(point: str = "projected", *, fresh: bool = False, card: ModelCard = CARD) -> LlavaAdapter:
        key = (point, card.checkpoint, card.dtype)
        if fresh or key not in cache:
            cache[key] = LlavaAdapter.load(card, device="cpu", cache_dir=tiny_cache, point=point)
        return cache[key]

    return load


@pytest.fixture(scope="module")
def llava_full(llava_dir):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()


# ------------------------------------------------------------------------------------------------ images


def noise_image(size, seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def shapes_image(size, seed):
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        w, h = size
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = (x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return img


def mixed_images():
    """Noise and shapes at several sizes and aspect ratios, so resize + centre crop are part of the comparison."""
    return [noise_image((80, 80), 0), shapes_image((224, 224), 1), noise_image((224, 160), 2),
            shapes_image((80, 80), 3), shapes_image((150, 97), 4)]


def square_scenes(n=8, size=224):
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 210, 20)]
    side, out = size // 4, []
    for i in range(n):
        img = Image.new("RGB", (size, size), (128, 128, 128))
        x, y = (i % 4) * side, ((i // 4) % 2 * 2 + (i % 2)) * side
        ImageDraw.Draw(img).rectangle((x, y, x + side - 1, y + side - 1), fill=colours[i % 4])
        out.append(img)
    return out


# --------------------------------------------------------------------------------------------- capturing


def run_full_model(model, llava_dir, images, texts=None):
    """LlavaProcessor inputs -> the model's own forward; returns (inputs, LLM inputs_embeds, projector input)."""
    from transformers import AutoProcessor

    texts = texts or [f"<image> {TEXTS[i % 2]}" for i in range(len(images))]
    inputs = AutoProcessor.from_pretrained(llava_dir)(images=images, text=texts, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    captured = {}
    handles = [
        model.model.language_model.register_forward_pre_hook(
            lambda m, a, kw: captured.__setitem__("embeds", kw["inputs_embeds"].detach().clone()), with_kwargs=True),
        model.model.multi_modal_projector.register_forward_pre_hook(
            lambda m, a: captured.__setitem__("patches", a[0].detach().clone())),
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return inputs, captured["embeds"], captured["patches"]


def at_image_tokens(inputs, embeds, image_token_id):
    mask = inputs["input_ids"] == image_token_id
    assert (mask.sum(1) == Q).all(), "the processor must expand <image> to Q tokens per image"
    return embeds[mask].reshape(embeds.shape[0], Q, embeds.shape[-1])


def weight_map(path: Path) -> dict[str, str]:
    return json.loads((path / loading.INDEX).read_text())["weight_map"]


# ------------------------------------------------------------------------------------------------ exactness


def test_preprocess_matches_the_checkpoints_own_processor(llava_tiny, llava_dir):
    from transformers import AutoProcessor

    adapter, images = llava_tiny(), mixed_images()
    expected = AutoProcessor.from_pretrained(llava_dir)(images=images, text=["<image>"] * 5, return_tensors="pt")
    got = adapter.preprocess(images)
    assert got.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE) and got.dtype == torch.float32
    assert torch.equal(got, expected["pixel_values"])


def test_projected_prompt_is_exactly_what_the_language_model_reads(llava_tiny, llava_full, llava_dir):
    adapter, images = llava_tiny("projected"), mixed_images()
    inputs, embeds, _ = run_full_model(llava_full, llava_dir, images)
    px = adapter.preprocess(images)
    prompt = adapter.visual_prompt(px)
    assert prompt.shape == (5, Q, llava_full.config.text_config.hidden_size)
    assert torch.equal(at_image_tokens(inputs, embeds, llava_full.config.image_token_id), prompt)
    assert torch.equal(adapter.resample(adapter.vision_features(px)), prompt)
    with torch.no_grad():  # and the model's own get_image_features agrees
        assert torch.equal(torch.stack(llava_full.get_image_features(pixel_values=px).pooler_output), prompt)


def test_vision_patches_are_exactly_what_the_projector_reads(llava_tiny, llava_full, llava_dir):
    adapter, images = llava_tiny("vision_patches"), mixed_images()
    inputs, embeds, patches = run_full_model(llava_full, llava_dir, images)
    prompt = adapter.visual_prompt(adapter.preprocess(images))
    assert prompt.shape == (5, Q, llava_full.config.vision_config.hidden_size)  # CLS dropped
    assert torch.equal(patches, prompt)
    with torch.no_grad():  # layer -2, not the last layer: it differs from the tower's last hidden state
        last = llava_full.model.vision_tower(pixel_values=adapter.preprocess(images)).last_hidden_state[:, 1:]
        assert not torch.allclose(last, prompt)
        lm_input = at_image_tokens(inputs, embeds, llava_full.config.image_token_id)
        assert torch.equal(llava_tiny("projected").resample(prompt), lm_input)


def test_reference_prompts_are_the_hooked_model_tensors(llava_tiny):
    projected, patches = llava_tiny("projected"), llava_tiny("vision_patches")
    px = projected.preprocess(mixed_images()[:3])
    ref = projected.reference_prompts(px)
    assert set(ref) == {*LlavaAdapter.points, *projected.layers}
    assert torch.equal(ref["projected"], projected.visual_prompt(px))
    assert torch.equal(ref["vision_patches"], patches.visual_prompt(px))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_prompts_are_exactly_what_the_model_uses(llava_tiny, llava_dir, dtype):
    from transformers import LlavaForConditionalGeneration

    card = CARD.model_copy(update={"dtype": str(dtype).removeprefix("torch.")})
    projected, patches = llava_tiny("projected", card=card), llava_tiny("vision_patches", card=card)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=dtype).eval()
    images = mixed_images()[:3]
    inputs, embeds, reads = run_full_model(model, llava_dir, images)
    px = projected.preprocess(images)
    assert px.dtype == dtype and embeds.dtype == dtype
    assert torch.equal(at_image_tokens(inputs, embeds, model.config.image_token_id), projected.visual_prompt(px))
    assert torch.equal(reads, patches.visual_prompt(px))
    assert projected.embed_text(TEXTS)[0].dtype == dtype


def test_embed_text_is_the_models_own_input_embedding(llava_tiny, llava_full, llava_dir):
    adapter = llava_tiny()
    emb, mask = adapter.embed_text(TEXTS)
    ids = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert (ids != adapter.tokenizer.unk_token_id).all(), "test texts must be in the tiny vocabulary"
    assert emb.shape == (2, ids.shape[1], adapter.text_dim) and mask.bool().all()
    with torch.no_grad():
        assert torch.equal(emb, llava_full.get_input_embeddings()(ids))
    inputs, embeds, _ = run_full_model(llava_full, llava_dir, mixed_images()[:2], [f"<image> {t}" for t in TEXTS])
    text_positions = inputs["input_ids"] != llava_full.config.image_token_id
    assert torch.equal(embeds[text_positions].reshape(2, -1, adapter.text_dim), emb)


def test_embed_text_masks_padding(llava_tiny):
    adapter = llava_tiny()
    emb, mask = adapter.embed_text(["left", "what is left of the red circle"])
    assert emb.shape[:2] == mask.shape == (2, 7)
    assert mask[0].sum() == 1 and mask[1].all()
    assert torch.equal(emb[0, mask[0].bool()], adapter.embed_text(["left"])[0][0])


# -------------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", POINTS)
def test_different_images_give_different_prompts(llava_tiny, point):
    prompts = llava_tiny(point).visual_prompt(llava_tiny(point).preprocess(square_scenes(8)))
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(prompts[i], prompts[j], atol=1e-6), f"images {i} and {j} give the same prompt"
    within = prompts.flatten(1).std(dim=1).mean()
    ratio = (prompts.std(dim=0).mean() / within).item()
    assert ratio > 0.05, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"
    assert (prompts.std(dim=1).mean() / within).item() > 0.05  # the patch tokens are not all alike


# -------------------------------------------------------------------------------------- selective loading


def _relayout(src: Path, dst: Path, rename) -> None:
    """A copy of the checkpoint with every tensor key renamed (same shards, index rewritten)."""
    dst.mkdir(parents=True)
    index = json.loads((src / loading.INDEX).read_text())
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(src / shard), framework="pt") as f:
            save_file({rename(k): f.get_tensor(k) for k in f.keys()}, str(dst / shard), metadata=f.metadata())
    index["weight_map"] = {rename(k): v for k, v in index["weight_map"].items()}
    (dst / loading.INDEX).write_text(json.dumps(index))
    for p in src.iterdir():
        if p.suffix == ".json" and p.name != loading.INDEX:
            shutil.copy(p, dst / p.name)


def _hub_layout(key: str) -> str:  # llava-hf/llava-1.5-7b-hf: CLIP keys keep vision_model.
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


def _module_layout(key: str) -> str:  # transformers 5.x module names
    if key.startswith("language_model.lm_head."):
        return key.removeprefix("language_model.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    return "model." + key


def test_save_pretrained_writes_the_legacy_llm_prefix(llava_dir):
    keys = set(weight_map(llava_dir))
    assert EMBED_KEY in keys and "language_model.lm_head.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys and "vision_tower.pre_layrnorm.weight" in keys
    assert not [k for k in keys if k.startswith("model.") or k.startswith("vision_tower.vision_model.")]


def _module_layout_4x(key: str) -> str:  # transformers 4.5x module names (CLIP still under vision_model.)
    return _module_layout(_hub_layout(key))


@pytest.mark.parametrize("layout", [_hub_layout, _module_layout, _module_layout_4x],
                         ids=["hub-legacy", "module-names", "module-names-4x"])
def test_every_checkpoint_layout_loads_the_same(llava_tiny, llava_dir, llava_full, tmp_path, layout):
    from transformers import LlavaForConditionalGeneration

    copy = tmp_path / "relaid"
    _relayout(llava_dir, copy, layout)
    # the layout is one transformers itself reads (so it is a real layout, not one made up for the test)
    relaid = LlavaForConditionalGeneration.from_pretrained(copy)
    for (name, a), (_, b) in zip(sorted(llava_full.state_dict().items()), sorted(relaid.state_dict().items())):
        assert torch.equal(a, b), name

    card = ModelCard(name="relaid", family="llava", checkpoint=str(copy))
    for point in POINTS:
        adapter, reference = llava_tiny(point, card=card), llava_tiny(point)
        assert adapter.loaded_keys == {layout(k) for k in reference.loaded_keys}
        px = reference.preprocess(square_scenes(3))
        assert torch.equal(adapter.visual_prompt(px), reference.visual_prompt(px))
    assert torch.equal(adapter.embed_text(TEXTS)[0], reference.embed_text(TEXTS)[0])


def test_loaded_keys_are_the_vision_tower_projector_and_embedding_table(llava_tiny, llava_dir):
    adapter = llava_tiny()
    keys = set(weight_map(llava_dir))
    expected = {k for k in keys if k.startswith(("vision_tower.", "multi_modal_projector."))} | {EMBED_KEY}
    assert adapter.loaded_keys == expected
    assert {k for k in keys if k.startswith("vision_tower.post_layernorm")} <= adapter.loaded_keys  # whole tower


def test_decoder_layers_are_never_read_and_decoder_only_shards_never_opened(llava_tiny, llava_dir, monkeypatch):
    real, log = loading.safe_open, {"opened": [], "read": []}

    def recording(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return RecordingHandle(real(path, *args, **kwargs), log)

    monkeypatch.setattr(loading, "safe_open", recording)
    adapter = llava_tiny(fresh=True)
    assert set(log["read"]) == adapter.loaded_keys
    assert not [k for k in log["read"] if k.startswith("language_model.") and k != EMBED_KEY]

    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map(llava_dir).items():
        by_shard.setdefault(shard, set()).add(key)
    decoder_only = {s for s, ks in by_shard.items() if all(k.startswith("language_model.model.layers.") for k in ks)}
    assert decoder_only, "the tiny checkpoint should have a shard holding decoder layers only"
    assert not decoder_only & set(log["opened"])
    assert len(log["opened"]) == len(set(log["opened"])), "a shard was opened more than once"


# -------------------------------------------------------------------------------- shapes, points, params


@pytest.mark.parametrize("point", POINTS)
def test_prompt_shape_matches_shape_at(llava_tiny, point):
    adapter = llava_tiny(point)
    prompt = adapter.visual_prompt(adapter.preprocess(mixed_images()[:2]))
    assert prompt.shape == (2, *adapter.prompt_shape) == (2, *shape_at(adapter.config, point))
    assert adapter.prompt_shape == ((Q, 48) if point == "projected" else (Q, 32))
    assert adapter.text_dim == 48 and prompt.dtype == torch.float32


def test_there_is_no_resampler_point(llava_tiny, llava_dir, tiny_cache):
    assert LlavaAdapter.points == ("projected", "vision_patches")
    with pytest.raises(SpatialbenchError, match="no extraction point 'resampler'"):
        LlavaAdapter.load(CARD, cache_dir=tiny_cache, point="resampler")
    with pytest.raises(SpatialbenchError, match="resampler"):
        shape_at(llava_tiny().config, "resampler")


@pytest.mark.parametrize("point", POINTS)
def test_resampler_parameters_are_the_projector_at_projected_only(llava_tiny, point):
    adapter = llava_tiny(point)
    ids = [id(p) for p in adapter.resampler_parameters()]
    projector = {id(p) for p in adapter.parts.multi_modal_projector.parameters()}
    assert len(projector) == 4 and len(ids) == len(set(ids))
    assert set(ids) == (projector if point == "projected" else set())
    assert not {id(p) for p in adapter.parts.vision_tower.parameters()} & set(ids)
    assert id(adapter.embeddings.weight) not in ids


def test_every_resampler_parameter_gets_a_gradient_and_nothing_else_does(llava_tiny):
    adapter = llava_tiny("projected", fresh=True)
    for p in adapter.parameters():
        p.requires_grad_(True)
    px = adapter.preprocess(square_scenes(2))
    adapter.resample(adapter.vision_features(px).detach()).sum().backward()
    trained = {id(p) for p in adapter.resampler_parameters()}
    for name, p in [*adapter.parts.named_parameters(), ("embeddings.weight", adapter.embeddings.weight)]:
        if id(p) in trained:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("point", POINTS)
def test_batch_invariance_and_determinism(llava_tiny, point):
    adapter, images = llava_tiny(point), mixed_images()[:4]
    batch = adapter.visual_prompt(adapter.preprocess(images))
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im])) for im in images])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert torch.equal(batch, adapter.visual_prompt(adapter.preprocess(images)))
    assert not batch.requires_grad


def test_fingerprint_names_family_point_and_dtype(llava_tiny):
    first = llava_tiny(fresh=True).fingerprint()
    assert first == llava_tiny(fresh=True).fingerprint() and first.startswith("llava|local:")
    assert llava_tiny("vision_patches").fingerprint() != first
    assert llava_tiny(card=CARD.model_copy(update={"dtype": "bfloat16"})).fingerprint() != first


# ------------------------------------------------------------------------------ the tiny checkpoint itself


def test_tiny_checkpoint_loads_like_a_hub_checkpoint(llava_dir):
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer

    config, tokenizer = AutoConfig.from_pretrained(llava_dir), AutoTokenizer.from_pretrained(llava_dir)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>") != tokenizer.unk_token_id
    assert "<image>" in tokenizer.all_special_tokens
    assert config.text_config.vocab_size >= len(tokenizer)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, "default")
    assert config.image_seq_length == Q
    assert type(AutoProcessor.from_pretrained(llava_dir)).__name__ == "LlavaProcessor"
    assert AutoImageProcessor.from_pretrained(llava_dir).crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    assert len(set(weight_map(llava_dir).values())) > 1 and not (llava_dir / loading.SINGLE).exists()


@pytest.fixture(scope="module")
def checks(tiny_cache):
    from spatialbench.testing import assert_conformant

    return {c.name: c for c in assert_conformant(CARD, cache_dir=tiny_cache)}


def test_the_conformance_check_passes(checks):
    assert checks["prompt equals the model's own LLM input"].status == "pass"
    assert checks["[projected] resampler_parameters() is what joint training moves"].status == "pass"


def test_layers_are_vision_blocks_only_bit_equal_to_the_model(llava_tiny, checks):
    layers = ["vision.1", "vision.2"]  # no resampler
    check = checks["every declared layer equals the model's own hidden state"]
    assert (check.status, check.detail) == ("pass", f"bit-equal at {', '.join(layers)}")
    adapter = llava_tiny("vision_patches")
    assert adapter.layers == layers
    got = adapter.prompts_at(adapter.preprocess(mixed_images()[:3]), ["vision_patches", *layers])
    assert all(got[n].shape == (3, *adapter.shape_at(n)) == (3, Q + 1, 32) for n in layers)  # CLS kept
    # vision_feature_layer=-2 of 2 blocks: vision_patches is block 1's output less its CLS token
    assert torch.equal(got["vision.1"][:, 1:], got["vision_patches"])


def test_registry_and_cards():
    assert get_family("llava") is LlavaAdapter and LlavaAdapter.family == "llava"
    cards = ModelRegistry()
    assert cards.get("llava").checkpoint == "llava-hf/llava-1.5-7b-hf" and cards.get("llava").family == "llava"
    assert cards.get("llava-tiny").checkpoint == "tiny:llava-tiny"


# --------------------------------------------------------------------------------------------- real size


def llava_15_7b_config():
    """llava-hf/llava-1.5-7b-hf's config.json, written out (no download)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
                       pad_token_id=32001)
    return LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=32000,
                       image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu")


def test_real_size_shapes_on_the_meta_device():
    from transformers import LlavaForConditionalGeneration

    config = llava_15_7b_config()
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
        parts = LlavaParts(config)
    px = torch.empty(1, 3, 336, 336, device="meta")
    reads = {}
    model.model.multi_modal_projector.register_forward_pre_hook(lambda m, a: reads.__setitem__("x", a[0]))
    with torch.no_grad():
        projected = model.get_image_features(pixel_values=px).pooler_output[0]
        patches = parts.select(px)
        mine = parts.multi_modal_projector(patches)
    assert tuple(projected.shape) == shape_at(config, "projected") == tuple(mine.shape[1:]) == (576, 4096)
    assert tuple(reads["x"].shape[1:]) == shape_at(config, "vision_patches") == tuple(patches.shape[1:]) == (576, 1024)
    assert config.image_seq_length == 576
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert 20e6 < projector < 22e6  # 21M, the parameters the joint regime trains
