"""The Idefics2 adapter against the model itself, on a tiny checkpoint built in code.

Exactness tests compare with what Idefics2ForConditionalGeneration feeds Mistral (hooks on text_model),
on batches whose images differ in size, so the processor's padding and pixel_attention_mask are part
of what is compared.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from spatialbench.adapters import loading
from spatialbench.adapters.families import get_family
from spatialbench.adapters.idefics2 import (
    EXTRACTION_PREFIXES,
    Idefics2Adapter,
    Idefics2Parts,
    shape_at,
)
from spatialbench.adapters.tiny.builds import materialise
from spatialbench.adapters.tiny.idefics2 import tiny_config, tiny_processor
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import ModelCard

from .helpers import TEXTS, RecordingHandle, index_of, mixed_images, noise_image, shapes_image, square_scenes

POINTS = ("projected", "resampler", "vision_patches")
CARD = ModelCard(name="idefics2-tiny", family="idefics2", checkpoint="tiny:idefics2-tiny")
EMBED_KEY = "model.text_model.embed_tokens.weight"
DECODER = ("model.text_model.layers.", "model.text_model.norm.", "lm_head.")


@pytest.fixture(scope="module")
def tiny_dir(tiny_cache) -> Path:
    return materialise("idefics2-tiny", tiny_cache)


@pytest.fixture(scope="module")
def idefics2(tiny_cache, tiny_dir):
    cache: dict[tuple, Idefics2Adapter] = {}

    def load(point: str = "projected", *, fresh: bool = False, card: ModelCard = CARD) -> Idefics2Adapter:
        key = (point, card.dtype)
        if fresh or card.checkpoint != CARD.checkpoint:
            return Idefics2Adapter.load(card, cache_dir=tiny_cache, point=point)
        if key not in cache:
            cache[key] = Idefics2Adapter.load(card, cache_dir=tiny_cache, point=point)
        return cache[key]

    return load


@pytest.fixture(scope="module")
def full(tiny_dir):
    from transformers import Idefics2ForConditionalGeneration

    return Idefics2ForConditionalGeneration.from_pretrained(tiny_dir).eval()


def run_full_model(model, adapter, packed: torch.Tensor, texts: list[str] | None = None) -> dict:
    """Run the real model on <fake><image>*Q<fake> + text; capture the LLM input and the vision output."""
    q = model.config.perceiver_config.resampler_n_latents
    tok = adapter.tokenizer
    fake, image = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<image>"])
    ids = torch.tensor([[fake] + [image] * q + [fake]] * packed.shape[0])
    if texts:
        ids = torch.cat([ids, tok(texts, padding=True, return_tensors="pt")["input_ids"]], dim=1)
    got = {}
    hooks = [
        model.model.text_model.register_forward_pre_hook(
            lambda m, a, kw: got.__setitem__("lm", kw["inputs_embeds"].detach().clone()), with_kwargs=True),
        model.model.vision_model.register_forward_hook(
            lambda m, a, kw, out: got.update(vision=out.last_hidden_state.detach().clone(),
                                              mask=kw["patch_attention_mask"].clone()), with_kwargs=True),
    ]
    try:
        with torch.no_grad():  # exactly what the processor hands the model: [B, 1 image, ...] plus the pixel mask
            model(input_ids=ids, pixel_values=packed[:, None, :3],
                  pixel_attention_mask=packed[:, None, 3].long())
    finally:
        for h in hooks:
            h.remove()
    got["prompt"] = got["lm"][:, 1:q + 1]
    return got


def expected_patches(vision: torch.Tensor, mask: torch.Tensor, side: int) -> torch.Tensor:
    """Written out element by element: image i's patch (r, c) of the model's batch grid -> row r*side + c."""
    b, h, w = mask.shape
    out = torch.zeros(b, side * side, vision.shape[-1], dtype=vision.dtype)
    for i in range(b):
        for r in range(h):
            for c in range(w):
                if mask[i, r, c]:
                    out[i, r * side + c] = vision[i, r * w + c]
    return out


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_is_the_processor_without_splitting(idefics2, tiny_dir):
    from transformers import AutoImageProcessor

    adapter, images = idefics2(), mixed_images()
    processor = AutoImageProcessor.from_pretrained(tiny_dir)
    assert processor.do_image_splitting  # like idefics2-8b's saved config: the adapter must turn it off
    assert processor(images=[[images[0]]], return_tensors="pt")["pixel_values"].shape[1] == 5
    ref = processor(images=[[im] for im in images], do_image_splitting=False, return_tensors="pt")
    got = adapter.preprocess(images)
    assert got.shape == (5, 4, 64, 64) and got.dtype == torch.float32
    assert torch.equal(got[:, :3], ref["pixel_values"][:, 0])
    assert torch.equal(got[:, 3].long(), ref["pixel_attention_mask"][:, 0])
    assert got[4, 3].sum() == 64 * 41  # 150x97 -> 64x41, padded to 64x64


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("point", POINTS)
def test_prompt_is_exactly_what_the_model_feeds_its_language_model(idefics2, full, point):
    adapter = idefics2(point)
    px = adapter.preprocess(mixed_images())
    got = run_full_model(full, adapter, px)
    assert not got["mask"].all(), "the batch should contain padding"
    prompt = adapter.visual_prompt(px)
    if point == "vision_patches":
        expected = expected_patches(got["vision"], got["mask"], adapter.parts.side)
        assert torch.equal(prompt, expected)
        assert (prompt[4, 5 * 8:] == 0).all()  # the 150x97 image has 5 full patch rows: the rest is zero
    else:
        assert torch.equal(prompt, got["prompt"])
    assert torch.equal(adapter.reference_prompts(px)[point], prompt)  # the conformance check's own capture


def assert_layers(adapter, checks, views):
    """Every perceiver layer bit-equal to the model's, one block of latents per view, as the prompt."""
    layers = ["resampler.1", "resampler.2"]  # no vision layers: their padded grid has no fixed shape
    check = next(c for c in checks if c.name.startswith("every declared layer"))
    assert (check.status, check.detail) == ("pass", f"bit-equal at {', '.join(layers)}")
    assert adapter.layers == layers and all(adapter.shape_at(n) == (views * 8, 48) for n in layers)
    px = adapter.preprocess(mixed_images()[2:])  # padding in the batch
    got = adapter.prompts_at(px, ["resampler", *layers])
    assert all(got[n].shape == (3, *adapter.shape_at(n)) for n in layers)
    with torch.no_grad():  # the last layer's latents are what the final norm turns into the prompt
        assert torch.equal(adapter.parts.connector.perceiver_resampler.norm(got["resampler.2"]), got["resampler"])


def test_layers_are_every_perceiver_layer_bit_equal_to_the_model(idefics2, tiny_cache):
    from spatialbench.testing import run_checks

    assert_layers(idefics2("resampler"), run_checks(CARD, cache_dir=tiny_cache), views=1)


def test_batch_grid_smaller_than_the_models_maximum(idefics2, full):
    """Images under the longest edge: the model builds a 5x8 patch grid, and the adapter must crop its fixed 8x8
    grid to exactly that. 50x40 is kept as is (between the edges) and ends in partial patches, which are masked."""
    adapter = idefics2("projected")
    images = [shapes_image((150, 97), 4), noise_image((50, 40), 5), noise_image((200, 120), 6)]
    px = adapter.preprocess(images)
    assert px.shape[-2:] == (41, 64)
    got = run_full_model(full, adapter, px)
    assert got["mask"].shape[1:] == (5, 8) and got["mask"][1].sum() == 5 * 6
    seen = []
    hook = adapter.parts.connector.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0].shape), with_kwargs=True)
    try:
        prompt = adapter.visual_prompt(px)
    finally:
        hook.remove()
    assert torch.equal(prompt, got["prompt"])
    assert seen == [(3, 5 * 8, 32)]  # the model's own 5x8 grid, not the 8x8 one the features are stored on


def test_resampler_and_projected_are_the_same_tensor(idefics2):
    px = idefics2().preprocess(square_scenes(3))
    assert torch.equal(idefics2("resampler").visual_prompt(px), idefics2("projected").visual_prompt(px))


def test_embed_text_is_the_models_own_input_embedding(idefics2, full):
    adapter = idefics2()
    emb, mask = adapter.embed_text(TEXTS)
    ids = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert (ids != adapter.tokenizer.unk_token_id).all() and mask.bool().all()
    assert emb.shape == (2, ids.shape[1], adapter.text_dim) and adapter.text_dim == 48
    with torch.no_grad():
        assert torch.equal(emb, full.get_input_embeddings()(ids))
    got = run_full_model(full, adapter, adapter.preprocess(square_scenes(2)), TEXTS)
    assert torch.equal(got["lm"][:, -ids.shape[1]:], emb)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_prompt_is_exactly_what_the_language_model_reads(idefics2, tiny_dir, dtype):
    from transformers import Idefics2ForConditionalGeneration

    card = ModelCard(name="idefics2-tiny", family="idefics2", checkpoint="tiny:idefics2-tiny", dtype=dtype)
    adapter = idefics2("projected", card=card)
    model = Idefics2ForConditionalGeneration.from_pretrained(tiny_dir, dtype=getattr(torch, dtype)).eval()
    px = adapter.preprocess(mixed_images()[:3])
    assert px.dtype == getattr(torch, dtype)
    prompt = adapter.visual_prompt(px)
    assert prompt.dtype == px.dtype
    assert torch.equal(prompt, run_full_model(model, adapter, px)["prompt"])


# ------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", ("projected", "vision_patches"))
def test_different_images_give_different_prompts(idefics2, point):
    prompts = idefics2(point).visual_prompt(idefics2(point).preprocess(square_scenes(8)))
    within = prompts.flatten(1).std(dim=1).mean()
    ratio = (prompts.std(dim=0).mean() / within).item()
    assert ratio > 0.1, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(prompts[i], prompts[j], atol=1e-4)
    if point == "projected":  # latents that start alike (ones) make every row of a prompt alike
        assert (prompts.std(dim=1).mean() / within).item() > 0.3


@pytest.mark.parametrize("point", POINTS)
def test_batch_invariance_and_determinism(idefics2, point):
    adapter, images = idefics2(point), mixed_images()[2:]  # 224 square, 80 square, 150x97: padding in the batch
    batch = adapter.visual_prompt(adapter.preprocess(images))
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im])) for im in images])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    assert torch.equal(batch, adapter.visual_prompt(adapter.preprocess(images)))
    assert not batch.requires_grad


# ----------------------------------------------------------------------------------- shapes, params


@pytest.mark.parametrize("point", POINTS)
def test_shape_at_is_the_actual_shape(idefics2, point):
    adapter = idefics2(point)
    prompt = adapter.visual_prompt(adapter.preprocess(mixed_images()[:2]))
    assert tuple(prompt.shape[1:]) == shape_at(adapter.config, point) == adapter.prompt_shape
    assert adapter.prompt_shape == {"projected": (8, 48), "resampler": (8, 48), "vision_patches": (64, 32)}[point]


@pytest.mark.parametrize("point", ("projected", "resampler"))
def test_resampler_parameters_are_the_connector_and_all_get_gradients(idefics2, point):
    adapter = idefics2(point, fresh=True)
    params = adapter.resampler_parameters()
    ids = {id(p) for p in params}
    projection = {id(p) for p in adapter.parts.connector.modality_projection.parameters()}
    perceiver = {id(p) for p in adapter.parts.connector.perceiver_resampler.parameters()}
    assert len(ids) == len(params) and len(projection) == 3
    assert ids == projection | perceiver  # the projection precedes the perceiver: trained at both points
    vision = {id(p) for p in adapter.parts.vision_model.parameters()}
    assert vision and not vision & ids and id(adapter.embeddings.weight) not in ids

    px = adapter.preprocess(mixed_images()[2:])
    features = adapter.vision_features(px).detach()
    for p in adapter.parameters():
        p.requires_grad_(True)
    adapter.resample(features).sum().backward()
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in adapter.parameters() if id(p) not in ids)


def test_fingerprint(idefics2):
    adapter = idefics2("projected")
    assert adapter.fingerprint() == f"idefics2|{adapter.checkpoint.fingerprint()}|projected|float32"
    assert idefics2("resampler").fingerprint() != adapter.fingerprint()


def test_family_is_registered():
    assert get_family("idefics2") is Idefics2Adapter
    assert set(Idefics2Adapter.points) == set(POINTS)


# ------------------------------------------------------------------------------- selective loading


def test_loaded_keys_are_vision_connector_and_embedding_only(idefics2, tiny_dir):
    weight_map = index_of(tiny_dir)
    extraction = {k for k in weight_map if k.startswith(EXTRACTION_PREFIXES)}
    assert idefics2().loaded_keys == extraction | {EMBED_KEY}
    assert {k.split(".")[1] for k in extraction} == {"vision_model", "connector"}
    assert all(k.startswith(DECODER) or k in idefics2().loaded_keys for k in weight_map)


def test_decoder_layers_are_never_read_and_decoder_only_shards_never_opened(idefics2, tiny_dir, monkeypatch):
    real, log = loading.safe_open, {"opened": [], "read": []}

    def recording_safe_open(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return RecordingHandle(real(path, *args, **kwargs), log)

    monkeypatch.setattr(loading, "safe_open", recording_safe_open)
    adapter = idefics2(fresh=True)
    assert set(log["read"]) == adapter.loaded_keys
    assert not [k for k in log["read"] if k.startswith(DECODER)]
    by_shard: dict[str, set[str]] = {}
    for key, shard in index_of(tiny_dir).items():
        by_shard.setdefault(shard, set()).add(key)
    decoder_only = {s for s, keys in by_shard.items() if all(k.startswith(DECODER) for k in keys)}
    assert decoder_only and not decoder_only & set(log["opened"])


def test_tiny_checkpoint_is_sharded_and_avoids_the_init_traps(tiny_dir):
    assert len(set(index_of(tiny_dir).values())) > 1 and not (tiny_dir / loading.SINGLE).exists()
    key = "model.connector.perceiver_resampler.latents"
    with safe_open(str(tiny_dir / index_of(tiny_dir)[key]), framework="pt") as f:
        assert f.get_tensor(key).std() > 0.5


# ------------------------------------------------------------------------------------- real size


def test_real_size_shapes_on_meta(monkeypatch):
    """idefics2-8b's published hyperparameters, instantiated on the meta device: no weights, no download."""
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, masking_utils

    config = Idefics2Config(
        image_token_id=32001, tie_word_embeddings=False,
        vision_config={"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304, "num_attention_heads": 16,
                       "num_hidden_layers": 27, "patch_size": 14},
        perceiver_config={"hidden_act": "silu", "resampler_depth": 3, "resampler_head_dim": 96,
                          "resampler_n_heads": 16, "resampler_n_latents": 64, "num_key_value_heads": 4,
                          "hidden_size": 4096, "rms_norm_eps": 1e-5},
        text_config={"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "sliding_window": 4096,
                     "vocab_size": 32003, "pad_token_id": 0},
    )
    with torch.device("meta"):
        model = Idefics2ForConditionalGeneration(config)
        parts = Idefics2Parts(config)
    inner = model.model

    def millions(m):
        return sum(p.numel() for p in m.parameters()) / 1e6

    assert round(millions(inner.connector.perceiver_resampler)) == 651
    assert round(millions(inner.connector.modality_projection)) == 92
    assert 7100 < millions(inner.text_model) < 7120
    # The adapter's parts carry the checkpoint's own names.
    hf = set(model.state_dict())
    assert {f"model.{k}" for k in parts.state_dict()} == {k for k in hf if k.startswith(EXTRACTION_PREFIXES)}
    assert Idefics2Adapter.embedding_key(config, dict.fromkeys(hf)) == EMBED_KEY

    # The mask code checks `mask.all()` to skip itself, which meta tensors cannot answer: never skip it.
    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: False)
    patch_mask = torch.ones(1, 70, 70, dtype=torch.bool, device="meta")
    vision = inner.vision_model(pixel_values=torch.empty(1, 3, 980, 980, device="meta"),
                                patch_attention_mask=patch_mask).last_hidden_state
    prompt = inner.connector(vision, attention_mask=patch_mask.view(1, -1))
    assert tuple(vision.shape[1:]) == shape_at(config, "vision_patches") == (4900, 1152)
    assert tuple(prompt.shape[1:]) == shape_at(config, "projected") == shape_at(config, "resampler") == (64, 4096)
    packed = torch.empty(1, 4, 980, 980, device="meta")
    assert tuple(parts.vision_features(packed).shape[1:]) == (4900, 1152)


# ------------------------------------------------------------------------------- measured memory

PROBE = textwrap.dedent("""
    import json, os, resource, sys
    # A process spawned from pytest inherits pytest's peak RSS as the floor of its own ru_maxrss (the kernel
    # keeps the spawning memory's high-water mark across exec); a forked child starts from this small interpreter.
    if os.fork():
        sys.exit(os.waitstatus_to_exitcode(os.wait()[1]))
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from PIL import Image
    from spatialbench.adapters.idefics2 import Idefics2Adapter
    from spatialbench.specs import ModelCard

    def now():
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss

    def card(path):
        return ModelCard(name="m", family="idefics2", checkpoint=path)

    image = Image.new("RGB", (64, 64), (200, 40, 40))
    warm = Idefics2Adapter.load(card(sys.argv[1]))  # every import and code path a load takes
    warm.visual_prompt(warm.preprocess([image]))
    out = {"base": now()}
    print("ready", flush=True)
    heavy = sys.stdin.readline().strip()
    adapter = Idefics2Adapter.load(card(heavy))
    adapter.visual_prompt(adapter.preprocess([image]))  # touches every weight the adapter holds
    adapter.embed_text(["left of the circle"])
    out["load"] = now()
    out["mapped"] = sorted({Path(line.split()[-1]).name for line in Path("/proc/self/maps").read_text().splitlines()
                            if line.rstrip().endswith(".safetensors")})
    everything = adapter.checkpoint.load(lambda k: True)  # the control: what reading the LLM too would cost
    out["checksum"] = sum(float(t.float().sum()) for t in everything.values())
    out["all"] = now()
    print(json.dumps(out), flush=True)
""")


@pytest.fixture
def memory_probe(tiny_dir, tmp_path_factory):
    """The memory test's fresh process (started by the test that reads it, never alongside other tests)."""
    log = tmp_path_factory.mktemp("idefics2-probe") / "stderr.txt"
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", PROBE, str(tiny_dir)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    child.log = log
    yield child
    if child.poll() is None:  # the test did not run or did not finish: end the probe and its forked child
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_peak_memory_of_a_load_stays_far_below_the_llm(memory_probe, tmp_path):
    """A sharded checkpoint whose ~200 MB Mistral dwarfs its ~8 MB vision + connector, loaded in a fresh process."""
    from transformers import Idefics2ForConditionalGeneration

    child = memory_probe
    processor = tiny_processor()
    config = tiny_config(processor.tokenizer, hidden_size=256, intermediate_size=1024, num_hidden_layers=48,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=64)
    model = Idefics2ForConditionalGeneration(config)
    heavy = tmp_path / "idefics2-heavy-llm"
    model.save_pretrained(heavy, max_shard_size="20MB")
    processor.save_pretrained(heavy)
    sizes = {n: p.numel() * p.element_size() for n, p in model.state_dict().items()}
    del model
    llm = sum(v for k, v in sizes.items() if k.startswith(DECODER))
    extraction = sum(v for k, v in sizes.items() if k.startswith(EXTRACTION_PREFIXES))
    assert llm > 190e6 and extraction < 10e6

    assert child.stdout.readline().strip() == "ready", child.log.read_text()
    stdout, _ = child.communicate(str(heavy) + "\n", timeout=120)
    stderr = child.log.read_text()
    assert child.returncode == 0, stderr
    r = json.loads(stdout.strip().splitlines()[-1])
    (base_peak, base_rss), (load_peak, _), (all_peak, _) = r["base"], r["load"], r["all"]
    mb = f"LLM {llm / 1e6:.0f} MB; peak RSS {base_peak / 1e6:.0f} MB after imports (resident {base_rss / 1e6:.0f}), " \
         f"{load_peak / 1e6:.0f} MB after the load, {all_peak / 1e6:.0f} MB after reading everything"
    assert base_peak - base_rss < 0.1 * llm, f"the baseline peak hides slack a load could use unseen: {mb}"
    # ru_maxrss only grows, so this bounds what the load ever added over what was resident before it
    assert load_peak - base_rss < 0.25 * llm, f"the load grew memory by too much: {mb}"
    assert all_peak - load_peak > 0.75 * llm, f"the control: reading the LLM too must show in the peak: {mb}"
    shards: dict[str, set[str]] = {}
    for key, shard in index_of(heavy).items():
        shards.setdefault(shard, set()).add(key)
    decoder_only = {s for s, keys in shards.items() if all(k.startswith(DECODER) for k in keys)}
    assert len(decoder_only) >= 8 and not decoder_only & set(r["mapped"])


# ------------------------------------------------------------------------------------ image splitting

SPLIT = CARD.model_copy(update={"name": "idefics2-tiny-split", "options": {"image_splitting": True}})


def test_image_splitting_gives_five_views_of_latents_exactly_as_the_model_reads_them(tiny_cache):
    from spatialbench.testing import run_checks

    checks = run_checks(SPLIT, cache_dir=tiny_cache)
    assert not [f"{c.name}: {c.detail}" for c in checks if c.status == "fail"]
    assert next(c for c in checks if c.name.startswith("prompt equals")).status == "pass"
    assert_layers(Idefics2Adapter.load(SPLIT, cache_dir=tiny_cache), checks, views=5)


def test_image_splitting_shapes_cost_and_the_whole_image_last(idefics2, tiny_cache):
    split = Idefics2Adapter.load(SPLIT, cache_dir=tiny_cache)
    one = idefics2()
    images = [shapes_image((150, 97), 4), noise_image((80, 80), 0)]
    assert split.shape_at("projected") == (5 * 8, 48) and split.shape_at("vision_patches") == (5 * 64, 32)
    prompt = split.visual_prompt(split.preprocess(images))
    assert prompt.shape == (2, 40, 48)
    # The fifth view is the whole image, resized as without splitting: its latents are the unsplit prompt
    # (up to the batch's padding, which the masks hide).
    torch.testing.assert_close(prompt[:, 32:], one.visual_prompt(one.preprocess(images)), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(prompt[:, :8], prompt[:, 32:], atol=1e-3)  # a crop is not the whole image
    assert split.fingerprint() != one.fingerprint()  # cached features follow the option


def test_image_splitting_must_be_a_boolean(tiny_cache):
    card = CARD.model_copy(update={"options": {"image_splitting": "yes"}})
    with pytest.raises(SpatialbenchError) as err:
        Idefics2Adapter.load(card, cache_dir=tiny_cache)
    assert "options.image_splitting" in str(err.value)
