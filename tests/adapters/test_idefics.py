"""The IDEFICS adapter against the model itself, on the tiny checkpoint built in code.

IDEFICS feeds its visual prompt not into inputs_embeds but, as `image_hidden_states`, into every gated
cross-attention layer. The exactness tests capture that argument with a forward pre-hook while
IdeficsForVisionText2Text runs on inputs made by the checkpoint's own IdeficsProcessor.
"""

import copy
import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spatialbench.adapters import loading
from spatialbench.adapters.tiny.builds import materialise
from spatialbench.adapters.tiny import IMAGE_SIZE
from spatialbench.adapters.families import get_family
from spatialbench.adapters.idefics import EMBED_PREFIX, EXTRACTION_PREFIXES, IdeficsAdapter, shape_at
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry
from spatialbench.specs import ModelCard
from .helpers import RecordingHandle, mixed_images, square_scenes

CARD = ModelCard(name="idefics-tiny", family="idefics", checkpoint="tiny:idefics-tiny")
POINTS = ("resampler", "projected", "vision_patches")
PROMPT_POINTS = ("resampler", "projected")  # the same tensor in this family
LLM_ONLY = ("model.layers.", "model.gated_cross_attn_layers.", "model.norm.", "lm_head.")
TEXTS = ["what is left of the red circle", "where is the blue square in image"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_cache) -> Path:
    return materialise("idefics-tiny", tiny_cache)


@pytest.fixture(scope="module")
def idefics(tiny_cache, tiny_dir):
    cache: dict[tuple[str, str], IdeficsAdapter] = {}

    def load(point: str = "projected", *, fresh: bool = False, card: ModelCard = CARD) -> IdeficsAdapter:
        if fresh or card.name != CARD.name or card.checkpoint != CARD.checkpoint:
            return IdeficsAdapter.load(card, cache_dir=tiny_cache, point=point)
        key = (point, card.dtype)
        if key not in cache:
            cache[key] = IdeficsAdapter.load(card, cache_dir=tiny_cache, point=point)
        return cache[key]

    return load


def full_model(tiny_dir, dtype=torch.float32):
    from transformers import IdeficsForVisionText2Text

    return IdeficsForVisionText2Text.from_pretrained(tiny_dir, dtype=dtype).eval()


@pytest.fixture(scope="module")
def full(tiny_dir):
    return full_model(tiny_dir)


@pytest.fixture(scope="module")
def processor(tiny_dir):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_dir)


def processor_inputs(processor, prompts):
    """What IdeficsProcessor makes of prompts that interleave strings and images."""
    return dict(processor(text=prompts, return_tensors="pt"))


def run_capturing(model, inputs, **overrides) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
    """Run the model; return the image_hidden_states every gated cross-attention layer read, the
    Perceiver's input and output, and the logits."""
    inner = model.model
    captured: dict[str, list[torch.Tensor]] = {"xattn": [], "perceiver_in": [], "perceiver_out": []}
    handles = []
    for layer in inner.gated_cross_attn_layers:
        sig = inspect.signature(layer.forward)

        def pre_hook(module, args, kwargs, sig=sig):
            captured["xattn"].append(sig.bind(*args, **kwargs).arguments["image_hidden_states"].detach().clone())

        handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))

    def perceiver_hook(module, args, out):
        captured["perceiver_in"].append(args[0].clone())
        captured["perceiver_out"].append(out.clone())

    handles.append(inner.perceiver_resampler.register_forward_hook(perceiver_hook))
    try:
        with torch.no_grad():
            logits = model(**{**inputs, **overrides}).logits
    finally:
        for h in handles:
            h.remove()
    assert len(captured["xattn"]) == len(inner.gated_cross_attn_layers) >= 2
    return captured, logits


def index_of(d: Path) -> dict[str, str]:
    return json.loads((d / loading.INDEX).read_text())["weight_map"]


# ------------------------------------------------------------------------------------------- exactness


def test_preprocess_is_what_the_idefics_processor_puts_in_pixel_values(idefics, processor):
    adapter, images = idefics(), mixed_images()
    got = adapter.preprocess(images)
    inputs = processor_inputs(processor, [[im, t] for im, t in zip(images, TEXTS * 3)])
    assert inputs["pixel_values"].shape == (len(images), 1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert got.dtype == torch.float32
    assert torch.equal(got, inputs["pixel_values"][:, 0])


@pytest.mark.parametrize("point", PROMPT_POINTS)
def test_prompt_is_exactly_the_cross_attention_input(idefics, full, processor, point):
    adapter, images = idefics(point), mixed_images()
    inputs = processor_inputs(processor, [[t, im, "left"] for im, t in zip(images, TEXTS * 3)])
    captured, _ = run_capturing(full, inputs)
    prompt = adapter.visual_prompt(adapter.preprocess(images))
    assert prompt.shape == (len(images), *shape_at(full.config, point)) == (len(images), 8, 32)
    for xattn in captured["xattn"]:  # every cross-attention layer reads the same tensor
        assert torch.equal(xattn, prompt)
    assert torch.equal(captured["perceiver_out"][0], prompt)


def test_vision_patches_are_what_the_perceiver_reads(idefics, full, processor):
    adapter, images = idefics("vision_patches"), mixed_images()
    captured, _ = run_capturing(full, processor_inputs(processor, [[im, "left"] for im in images]))
    patches = adapter.visual_prompt(adapter.preprocess(images))
    assert patches.shape == (len(images), 65, 32) == (len(images), *adapter.prompt_shape)
    assert torch.equal(captured["perceiver_in"][0], patches)


def test_several_images_per_prompt_are_concatenated_latents(idefics, full, processor):
    """image_hidden_states is [B, num_images * latents, D]: the model's view over per-image prompts."""
    adapter = idefics("projected")
    a, b = square_scenes(4)[:2], square_scenes(4)[2:]
    inputs = processor_inputs(processor, [[a[i], "left of", b[i], "what"] for i in range(2)])
    captured, _ = run_capturing(full, inputs)
    px = inputs["pixel_values"]  # [B, 2, 3, H, W]
    q, d = adapter.prompt_shape
    assert captured["xattn"][0].shape == (2, 2 * q, d)
    flat = adapter.visual_prompt(px.flatten(0, 1))  # as the model batches them
    assert torch.equal(captured["xattn"][0], flat.view(2, 2 * q, d))
    per_image = torch.cat([adapter.visual_prompt(px[:, 0]), adapter.visual_prompt(px[:, 1])], dim=1)
    torch.testing.assert_close(captured["xattn"][0], per_image, atol=1e-5, rtol=0)


def test_injected_prompt_and_features_reproduce_the_models_output(idefics, full, processor):
    """The prompt is all the LLM reads of the image: feeding it back gives the same logits, bit for bit."""
    adapter, images = idefics("projected"), square_scenes(3)
    inputs = processor_inputs(processor, [[im, t] for im, t in zip(images, TEXTS * 2)])
    _, logits = run_capturing(full, inputs)
    px = adapter.preprocess(images)
    features = adapter.vision_features(px)
    _, via_prompt = run_capturing(full, inputs, pixel_values=None, perceiver_embeddings=adapter.resample(features))
    _, via_features = run_capturing(full, inputs, pixel_values=None, image_encoder_embeddings=features)
    assert torch.equal(via_prompt, logits) and torch.equal(via_features, logits)
    # and the gates are open, so the image does reach the logits
    _, other = run_capturing(full, inputs, pixel_values=None, perceiver_embeddings=adapter.resample(features).flip(0))
    assert not torch.allclose(other, logits)


def test_reference_prompts_agree_with_the_adapter(idefics):
    px = idefics().preprocess(square_scenes(3))
    reference = idefics().reference_prompts(px, TEXTS[:1] * 3)
    assert set(reference) == {*POINTS, *idefics().layers}  # with every declared layer
    for point in POINTS:
        assert torch.equal(reference[point], idefics(point).visual_prompt(px)), point


def test_layers_are_vision_depths_and_every_perceiver_block_bit_equal_to_the_model(idefics, tiny_cache):
    from spatialbench.testing import run_checks

    layers = ["vision.1", "vision.2", "resampler.1", "resampler.2"]
    check = next(c for c in run_checks(CARD, cache_dir=tiny_cache) if c.name.startswith("every declared layer"))
    assert (check.status, check.detail) == ("pass", f"bit-equal at {', '.join(layers)}")
    adapter = idefics("resampler")
    assert adapter.layers == layers
    px = adapter.preprocess(mixed_images()[:3])
    got = adapter.prompts_at(px, ["resampler", *layers])
    assert all(got[n].shape == (3, *adapter.shape_at(n)) for n in layers)
    with torch.no_grad():  # the last block's latents are what the final layer_norm turns into the prompt
        assert torch.equal(adapter.parts.perceiver_resampler.layer_norm(got["resampler.2"]), got["resampler"])


def test_embed_text_is_the_models_own_decoupled_input_embedding(idefics, full):
    adapter = idefics()
    texts = ["<image> left of the red circle", "where is <fake_token_around_image> square"]
    emb, mask = adapter.embed_text(texts)
    ids = adapter.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert (ids >= full.config.vocab_size).any(), "the texts must reach the additional (decoupled) vocabulary"
    assert (ids != adapter.tokenizer.unk_token_id).all()
    assert emb.shape == (2, ids.shape[1], adapter.text_dim) and adapter.text_dim == full.config.hidden_size
    assert mask.tolist() == (ids != adapter.tokenizer.pad_token_id).long().tolist()
    with torch.no_grad():
        assert torch.equal(emb, full.get_input_embeddings()(ids))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_prompt_is_exactly_the_cross_attention_input(idefics, tiny_dir, processor, dtype):
    card = CARD.model_copy(update={"dtype": str(dtype).removeprefix("torch.")})
    adapter, images = idefics("projected", card=card), mixed_images()[:3]
    model = full_model(tiny_dir, dtype)
    captured, _ = run_capturing(model, processor_inputs(processor, [[im, "left"] for im in images]))
    px = adapter.preprocess(images)
    prompt = adapter.visual_prompt(px)
    assert px.dtype == prompt.dtype == captured["xattn"][0].dtype == dtype
    assert torch.equal(captured["xattn"][0], prompt)
    assert torch.equal(captured["perceiver_in"][0], adapter.vision_features(px))
    assert adapter.embed_text(TEXTS)[0].dtype == dtype


# ------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", ("resampler", "vision_patches"))
def test_different_images_give_different_prompts(idefics, point):
    prompts = idefics(point).visual_prompt(idefics(point).preprocess(square_scenes(8)))
    n = prompts.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            assert not torch.allclose(prompts[i], prompts[j], atol=1e-6), f"images {i} and {j} give the same prompt"
    within = prompts.flatten(1).std(dim=1).mean()
    ratio = (prompts.std(dim=0).mean() / within).item()
    assert ratio > 0.05, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"
    assert (prompts.std(dim=1).mean() / within).item() > 0.05  # the latents are not all alike


def test_tiny_checkpoint_avoids_the_idefics_init_traps(tiny_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.use_resampler and config.perceiver_config.resampler_n_latents == 8
    assert config.initializer_range > 0.1 and config.alpha_initializer == "ones"
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    image_ids = tokenizer.convert_tokens_to_ids(["<fake_token_around_image>", "<image>"])
    assert min(image_ids) >= config.vocab_size and max(image_ids) < config.vocab_size + config.additional_vocab_size
    key = "model.perceiver_resampler.latents"
    with safe_open(str(tiny_dir / index_of(tiny_dir)[key]), framework="pt") as f:
        assert f.get_tensor(key).std() > 0.5


# ------------------------------------------------------------------------------- selective loading


def test_loaded_keys_are_vision_perceiver_and_embedding_table_only(idefics, tiny_dir):
    weight_map = index_of(tiny_dir)
    loaded = idefics().loaded_keys
    assert len(set(weight_map.values())) > 1, "the tiny checkpoint should be sharded"
    wanted = {k for k in weight_map if k.startswith((*EXTRACTION_PREFIXES, EMBED_PREFIX))}
    assert loaded == wanted
    assert {EMBED_PREFIX + "weight", EMBED_PREFIX + "additional_embedding.weight"} <= loaded
    assert not [k for k in loaded if k.startswith(LLM_ONLY)]


def test_llm_layers_are_never_read_and_llm_only_shards_never_opened(idefics, tiny_dir, monkeypatch):
    real, log = loading.safe_open, {"opened": [], "read": []}

    def recording_safe_open(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return RecordingHandle(real(path, *args, **kwargs), log)

    monkeypatch.setattr(loading, "safe_open", recording_safe_open)
    adapter = idefics(fresh=True)
    assert set(log["read"]) == adapter.loaded_keys
    by_shard: dict[str, set[str]] = {}
    for key, shard in index_of(tiny_dir).items():
        by_shard.setdefault(shard, set()).add(key)
    llm_only = {s for s, keys in by_shard.items() if all(k.startswith(LLM_ONLY) for k in keys)}
    assert llm_only, "the tiny checkpoint should have a shard holding LLM layers only"
    assert not llm_only & set(log["opened"])


def test_checkpoint_without_resampler_is_a_clear_error(tiny_dir, tiny_cache, tmp_path):
    copy_dir = tmp_path / "no-resampler"
    shutil.copytree(tiny_dir, copy_dir)
    config = json.loads((copy_dir / "config.json").read_text())
    config["use_resampler"] = False
    (copy_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(SpatialbenchError, match="use_resampler"):
        IdeficsAdapter.load(ModelCard(name="x", family="idefics", checkpoint=str(copy_dir)), cache_dir=tiny_cache)


# ------------------------------------------------------------------------------------ shapes, params


@pytest.mark.parametrize("point", POINTS)
def test_prompt_shape_matches_shape_at(idefics, point):
    adapter = idefics(point)
    px = adapter.preprocess(mixed_images()[:2])
    prompt = adapter.visual_prompt(px)
    assert prompt.shape == (2, *adapter.prompt_shape) == (2, *shape_at(adapter.config, point))
    assert prompt.dtype == torch.float32 and not prompt.requires_grad


@pytest.mark.parametrize("point", PROMPT_POINTS)
def test_resampler_parameters_are_the_perceiver_and_all_of_it_learns(idefics, point):
    adapter = idefics(point, fresh=True)
    params = adapter.resampler_parameters()
    ids = {id(p) for p in params}
    assert len(ids) == len(params) and all(isinstance(p, torch.nn.Parameter) for p in params)
    assert ids == {id(p) for p in adapter.parts.perceiver_resampler.parameters()}
    assert id(adapter.parts.perceiver_resampler.latents) in ids
    assert not ids & {id(p) for p in adapter.parts.vision_model.parameters()}
    assert not ids & {id(p) for p in adapter.embeddings.parameters()}

    for p in adapter.parameters():
        p.requires_grad_(True)
    px = adapter.preprocess(square_scenes(2))
    adapter.resample(adapter.vision_features(px).detach()).sum().backward()
    for name, p in adapter.parts.perceiver_resampler.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} gets no gradient"
    others = [p for p in adapter.parameters() if id(p) not in ids]
    assert others and all(p.grad is None for p in others)


# ------------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_names_the_point_and_follows_weights(idefics, tiny_dir, tmp_path):
    first = idefics("projected", fresh=True).fingerprint()
    assert first == idefics("projected", fresh=True).fingerprint()
    assert first.startswith("idefics|local:") and first.endswith("|projected|float32")
    assert idefics("resampler").fingerprint() != first

    key = "model.perceiver_resampler.latents"
    changed = tmp_path / tiny_dir.name
    shutil.copytree(tiny_dir, changed)
    shard = changed / index_of(changed)[key]
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(shard))
    tensors[key] = tensors[key] + 0.25
    save_file(tensors, str(shard), metadata=metadata)
    modified = idefics("projected", card=ModelCard(name="changed", family="idefics", checkpoint=str(changed)))
    assert modified.fingerprint() != first
    px = modified.preprocess(square_scenes(2))
    assert not torch.equal(modified.visual_prompt(px), idefics("projected").visual_prompt(px))


# ------------------------------------------------------------------------------ batch, determinism


@pytest.mark.parametrize("point", ("resampler", "vision_patches"))
def test_batch_invariance_and_determinism(idefics, point):
    adapter, images = idefics(point), mixed_images()[:4]
    batch = adapter.visual_prompt(adapter.preprocess(images))
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im])) for im in images])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert torch.equal(batch, adapter.visual_prompt(adapter.preprocess(images)))


# ------------------------------------------------------------------------------------- real size

IDEFICS_9B = {  # HuggingFaceM4/idefics-9b config.json, written out (LLaMA-7B + CLIP ViT-H/14)
    "vocab_size": 32000, "additional_vocab_size": 2, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "cross_layer_interval": 4, "qk_layer_norms": True,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "tie_word_embeddings": False, "use_resampler": True,
    "perceiver_config": {"use_resampler": True, "resampler_n_latents": 64, "resampler_depth": 6,
                         "resampler_n_heads": 16, "resampler_head_dim": 96, "qk_layer_norms_perceiver": True},
    "vision_config": {"embed_dim": 1280, "image_size": 224, "patch_size": 14, "intermediate_size": 5120,
                      "num_hidden_layers": 32, "num_attention_heads": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
}


class _Stop(Exception):
    pass


def test_real_size_idefics_9b_shapes_on_meta(monkeypatch):
    """The 9B model on the meta device: the cross-attention reads 64 latents x 1280 (the vision width)."""
    from transformers import IdeficsConfig, IdeficsForVisionText2Text
    from transformers.models.idefics import modeling_idefics

    config = IdeficsConfig(**copy.deepcopy(IDEFICS_9B))
    with torch.device("meta"):
        model = IdeficsForVisionText2Text(config)
    inner, captured = model.model, {}
    xattn = inner.gated_cross_attn_layers[0]
    sig = inspect.signature(xattn.forward)

    def pre_hook(module, args, kwargs):
        captured["projected"] = sig.bind(*args, **kwargs).arguments["image_hidden_states"]
        raise _Stop  # the prompt is known; the 32 decoder layers need not run

    xattn.register_forward_pre_hook(pre_hook, with_kwargs=True)
    inner.perceiver_resampler.register_forward_hook(lambda m, a, out: captured.__setitem__("resampler", out))
    inner.vision_model.register_forward_hook(lambda m, a, out: captured.__setitem__("vision_patches", out[0]))
    # Meta tensors have no values: skip the token lookup (inputs_embeds) and the padding-mask check.
    monkeypatch.setattr(modeling_idefics, "create_causal_mask", lambda **kwargs: None)
    with torch.device("meta"), pytest.raises(_Stop):
        model(inputs_embeds=torch.zeros(2, 5, 4096), pixel_values=torch.zeros(2, 1, 3, 224, 224),
              image_attention_mask=torch.ones(2, 5, 1, dtype=torch.long))

    assert shape_at(config, "vision_patches") == (257, 1280) == tuple(captured["vision_patches"].shape[1:])
    for point in PROMPT_POINTS:
        assert shape_at(config, point) == (64, 1280) == tuple(captured[point].shape[1:])
    assert xattn.cross_attn.k_proj.in_features == 1280 and xattn.cross_attn.k_proj.out_features == 4096
    assert len(inner.gated_cross_attn_layers) == 8
    perceiver = sum(p.numel() for p in inner.perceiver_resampler.parameters())
    assert 120e6 < perceiver < 130e6  # ~126M; the vision tower is ~631M


# -------------------------------------------------------------------------------------- registry


def test_family_and_cards():
    assert get_family("idefics") is IdeficsAdapter and IdeficsAdapter.points == ("resampler", "projected",
                                                                                    "vision_patches")
    cards = ModelRegistry()
    assert cards.get("idefics").checkpoint == "HuggingFaceM4/idefics-9b"
    assert cards.get("idefics-tiny").checkpoint == "tiny:idefics-tiny"
    assert all(cards.get(n).family == "idefics" for n in ("idefics", "idefics-tiny", "idefics-80b"))


def test_a_checkpoint_that_stores_position_ids_loads_as_from_pretrained_loads_it(idefics, tiny_dir, tmp_path):
    # The released IDEFICS checkpoints (written by transformers 4.x) store this buffer; 5.x holds it as
    # non-persistent and from_pretrained drops it. It used to be a fatal "unexpected" key here.
    key = "model.vision_model.embeddings.position_ids"
    stored = tmp_path / tiny_dir.name
    shutil.copytree(tiny_dir, stored)
    index_path = stored / loading.INDEX
    index = json.loads(index_path.read_text())
    shard = stored / index["weight_map"]["model.vision_model.embeddings.position_embedding.weight"]
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(shard))
    positions = tensors["model.vision_model.embeddings.position_embedding.weight"].shape[0]
    tensors[key] = torch.arange(positions).expand((1, -1)).contiguous()
    save_file(tensors, str(shard), metadata=metadata)
    index["weight_map"][key] = shard.name
    index_path.write_text(json.dumps(index))

    loaded = idefics("projected", card=ModelCard(name="stored-position-ids", family="idefics", checkpoint=str(stored)))
    assert key in loaded.skipped_keys and key not in loaded.loaded_keys  # listed, never read
    px = loaded.preprocess(square_scenes(2))
    assert torch.equal(loaded.visual_prompt(px), idefics("projected").visual_prompt(px))
