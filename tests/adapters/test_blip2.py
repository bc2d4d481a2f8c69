"""The BLIP-2 adapter against the model itself, on the tiny checkpoint built in code.

Every exactness test compares with what Blip2ForConditionalGeneration actually feeds its language model,
captured with hooks, so a wrong module, a wrong preprocessing step or a wrong extraction point fails.
"""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spatialbench.adapters import loading
from spatialbench.adapters.tiny import builds
from spatialbench.adapters.tiny import IMAGE_SIZE
from spatialbench.adapters.families import get_family
from spatialbench.adapters.blip2 import EXTRACTION_PREFIXES, Blip2Adapter
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import ModelCard

from .helpers import TEXTS, isolated_offline_hub, RecordingHandle, index_of, mixed_images, square_scenes

POINTS = ("resampler", "projected")
EMBED_KEY = "language_model.model.decoder.embed_tokens.weight"
DECODER_LAYERS = "language_model.model.decoder.layers."
# ---------------------------------------------------------------------------------------------- images


def run_full_model(model, pixel_values: torch.Tensor, text_ids: torch.Tensor):
    """Run the real model on [<image>]*Q + text; return (inputs_embeds the LLM got, Q-Former output)."""
    q = model.config.num_query_tokens
    image_ids = torch.full((pixel_values.shape[0], q), model.config.image_token_index, dtype=torch.long)
    input_ids = torch.cat([image_ids, text_ids], dim=1)
    captured = {}

    def lm_pre_hook(module, args, kwargs):
        captured["inputs_embeds"] = kwargs["inputs_embeds"].detach().clone()

    def qformer_hook(module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else output.last_hidden_state
        captured["qformer"] = out.detach().clone()

    handles = [
        model.language_model.register_forward_pre_hook(lm_pre_hook, with_kwargs=True),
        model.qformer.register_forward_hook(qformer_hook, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(pixel_values=pixel_values, input_ids=input_ids)
    finally:
        for h in handles:
            h.remove()
    assert captured["inputs_embeds"].shape[1] == q + text_ids.shape[1]
    return captured["inputs_embeds"], captured["qformer"]


def text_ids_for(adapter, n: int) -> torch.Tensor:
    texts = [TEXTS[i % len(TEXTS)] for i in range(n)]
    ids = adapter.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert (ids != adapter.tokenizer.unk_token_id).all(), "test texts must be in the tiny vocabulary"
    return ids


def test_preprocess_matches_the_checkpoints_own_image_processor(blip2_tiny, blip2_tiny_dir):
    from transformers import AutoImageProcessor

    adapter = blip2_tiny("projected")
    images = mixed_images()
    expected = AutoImageProcessor.from_pretrained(blip2_tiny_dir)(images=images, return_tensors="pt")["pixel_values"]
    got = adapter.preprocess(images)
    assert got.shape == (len(images), 3, IMAGE_SIZE, IMAGE_SIZE)
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_projected_prompt_is_exactly_what_the_language_model_reads(blip2_tiny, blip2_full):
    adapter = blip2_tiny("projected")
    q = blip2_full.config.num_query_tokens
    px = adapter.preprocess(mixed_images())
    embeds, _ = run_full_model(blip2_full, px, text_ids_for(adapter, px.shape[0]))

    prompt = adapter.visual_prompt(px)
    assert prompt.shape == (px.shape[0], q, blip2_full.config.text_config.hidden_size)
    assert torch.equal(embeds[:, :q], prompt)
    # and the two halves are also right on their own
    assert torch.equal(adapter.resample(adapter.vision_features(px)), prompt)
    assert torch.equal(adapter.vision_features(px), blip2_full.vision_model(pixel_values=px).last_hidden_state)


def test_resampler_prompt_is_exactly_the_qformer_output(blip2_tiny, blip2_full):
    adapter = blip2_tiny("resampler")
    q = blip2_full.config.num_query_tokens
    px = adapter.preprocess(mixed_images())
    embeds, qformer_out = run_full_model(blip2_full, px, text_ids_for(adapter, px.shape[0]))

    prompt = adapter.visual_prompt(px)
    assert prompt.shape == (px.shape[0], q, blip2_full.config.qformer_config.hidden_size)
    assert torch.equal(qformer_out, prompt)
    with torch.no_grad():
        assert torch.equal(blip2_full.language_projection(prompt), embeds[:, :q])
        assert torch.equal(adapter.parts.language_projection(prompt), blip2_tiny("projected").visual_prompt(px))


def test_layer_n_is_the_models_own_hidden_states_n(blip2_tiny, blip2_full):
    # The taps' numbering against transformers' output_hidden_states (index 0: the embeddings), so that
    # resampler.n means what a reader of the model's docs takes it to mean.
    adapter = blip2_tiny("resampler")
    px = adapter.preprocess(mixed_images())
    ours = adapter.prompts_at(px, adapter.layers)
    with torch.no_grad():
        vision = blip2_full.vision_model(pixel_values=px, output_hidden_states=True)
        queries = blip2_full.query_tokens.expand(len(px), -1, -1)
        qformer = blip2_full.qformer(query_embeds=queries, encoder_hidden_states=vision.last_hidden_state,
                                     output_hidden_states=True)
    assert adapter.layers == ["vision.1", "vision.2", "resampler.1", "resampler.2"]
    for name in adapter.layers:
        stage, n = name.split(".")
        assert torch.equal(ours[name], (vision if stage == "vision" else qformer).hidden_states[int(n)]), name
    assert torch.equal(ours["resampler.2"], adapter.visual_prompt(px))  # the last layer is the resampler point


def test_embed_text_is_the_models_own_input_embedding(blip2_tiny, blip2_full):
    adapter = blip2_tiny("projected")
    q = blip2_full.config.num_query_tokens
    emb, mask = adapter.embed_text(TEXTS)
    ids = adapter.tokenizer(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert emb.shape == (len(TEXTS), ids.shape[1], adapter.text_dim)
    assert mask.shape == ids.shape and mask.bool().all()
    with torch.no_grad():
        assert torch.equal(emb, blip2_full.get_input_embeddings()(ids))

    px = adapter.preprocess(mixed_images()[: len(TEXTS)])
    embeds, _ = run_full_model(blip2_full, px, ids)
    assert torch.equal(embeds[:, q:], emb)


def test_embed_text_masks_padding(blip2_tiny):
    adapter = blip2_tiny("projected")
    texts = ["left", "what is left of the red circle"]
    emb, mask = adapter.embed_text(texts)
    ids = adapter.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert emb.shape[:2] == mask.shape == ids.shape == (2, 7)
    assert mask.tolist() == (ids != adapter.tokenizer.pad_token_id).long().tolist()
    assert mask[0].sum() == 1 and mask[1].all()
    assert torch.equal(emb[0, mask[0].bool()], adapter.embed_text(["left"])[0][0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_prompt_is_exactly_what_the_language_model_reads(blip2_tiny, blip2_tiny_dir, dtype):
    from transformers import Blip2ForConditionalGeneration

    name = str(dtype).removeprefix("torch.")
    card = ModelCard(name="blip2-tiny", family="blip2", checkpoint="tiny:blip2-tiny", dtype=name)
    projected, resampler = blip2_tiny("projected", card=card), blip2_tiny("resampler", card=card)
    model = Blip2ForConditionalGeneration.from_pretrained(blip2_tiny_dir, dtype=dtype).eval()
    q = model.config.num_query_tokens
    px = projected.preprocess(mixed_images())
    assert px.dtype == dtype
    embeds, qformer_out = run_full_model(model, px, text_ids_for(projected, px.shape[0]))

    prompt = projected.visual_prompt(px)
    assert prompt.dtype == embeds.dtype == dtype
    assert torch.equal(embeds[:, :q], prompt)
    # the resampler point is the Q-Former output as the projection reads it (cast back to the model dtype)
    assert torch.equal(resampler.visual_prompt(px), qformer_out.to(dtype))
    emb, _ = projected.embed_text(TEXTS)
    assert emb.dtype == dtype


# ------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", POINTS)
def test_different_images_give_different_prompts(blip2_tiny, point):
    adapter = blip2_tiny(point)
    prompts = adapter.visual_prompt(adapter.preprocess(square_scenes(8)))  # [8, Q, D]
    n = prompts.shape[0]
    for i in range(n):
        for j in range(i + 1, n):
            assert not torch.allclose(prompts[i], prompts[j], atol=1e-6), f"images {i} and {j} give the same prompt"

    across_images = prompts.std(dim=0).mean()  # how much the prompt moves when the image changes
    within_prompt = prompts.flatten(1).std(dim=1).mean()  # the prompt's own scale
    ratio = (across_images / within_prompt).item()
    assert ratio > 0.05, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"

    # the query tokens are not all alike (zero-initialised queries make every row of a prompt the same)
    across_queries = prompts.std(dim=1).mean()
    assert (across_queries / within_prompt).item() > 0.05


def test_tiny_checkpoint_avoids_the_blip2_init_traps(blip2_tiny_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(blip2_tiny_dir)
    assert config.vision_config.initializer_range > 1e-3
    tensors = {}
    for shard in set(index_of(blip2_tiny_dir).values()):
        with safe_open(str(blip2_tiny_dir / shard), framework="pt") as f:
            if "query_tokens" in f.keys():
                tensors["query_tokens"] = f.get_tensor("query_tokens")
            if "vision_model.embeddings.patch_embedding.weight" in f.keys():
                tensors["patch"] = f.get_tensor("vision_model.embeddings.patch_embedding.weight")
    assert tensors["query_tokens"].std() > 0.1
    assert tensors["patch"].std() > 1e-3


# ------------------------------------------------------------------------------- selective loading


def test_tiny_checkpoint_is_sharded(blip2_tiny_dir):
    shards = sorted(p.name for p in blip2_tiny_dir.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (blip2_tiny_dir / loading.INDEX).is_file()
    assert not (blip2_tiny_dir / loading.SINGLE).exists()
    assert set(index_of(blip2_tiny_dir).values()) == set(shards)


def test_unsharded_local_checkpoint_loads_the_same(blip2_tiny, blip2_tiny_dir, tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    tensors, metadata = {}, None
    for shard in sorted(set(index_of(blip2_tiny_dir).values())):
        with safe_open(str(blip2_tiny_dir / shard), framework="pt") as f:
            metadata = f.metadata()
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    save_file(tensors, str(single / loading.SINGLE), metadata=metadata)
    for p in blip2_tiny_dir.iterdir():
        if p.suffix == ".json" and p.name != loading.INDEX:
            shutil.copy(p, single / p.name)

    card = ModelCard(name="blip2-single", family="blip2", checkpoint=str(single))
    adapter, reference = blip2_tiny("projected", card=card), blip2_tiny("projected")
    assert adapter.loaded_keys == reference.loaded_keys
    px = reference.preprocess(square_scenes(3))
    assert torch.equal(adapter.visual_prompt(px), reference.visual_prompt(px))


def test_loaded_keys_are_the_extraction_tensors_and_the_embedding_table_only(blip2_tiny, blip2_tiny_dir):
    adapter = blip2_tiny("projected")
    weight_map = index_of(blip2_tiny_dir)
    assert EMBED_KEY in weight_map
    lm_loaded = {k for k in adapter.loaded_keys if k.startswith("language_model.")}
    assert lm_loaded == {EMBED_KEY}

    prefixes = ("vision_model.", "qformer.", "query_tokens", "language_projection.")
    extraction = {k for k in weight_map if k.startswith(prefixes)}
    assert {k.split(".")[0] for k in extraction} == {"vision_model", "qformer", "query_tokens", "language_projection"}
    assert extraction <= adapter.loaded_keys
    assert adapter.loaded_keys == extraction | {EMBED_KEY}


def test_decoder_layers_are_never_read_and_decoder_only_shards_never_opened(
    blip2_tiny, blip2_tiny_dir, monkeypatch
):
    real = loading.safe_open
    log = {"opened": [], "read": []}

    def recording_safe_open(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return RecordingHandle(real(path, *args, **kwargs), log)

    monkeypatch.setattr(loading, "safe_open", recording_safe_open)
    adapter = blip2_tiny("projected", fresh=True)

    assert log["opened"] and log["read"], "the loader did not go through loading.safe_open"
    assert set(log["read"]) == adapter.loaded_keys
    read_layers = [k for k in log["read"] if k.startswith(DECODER_LAYERS)]
    assert not read_layers, f"decoder-layer tensors were read: {read_layers[:5]}"
    assert not [k for k in log["read"] if k.startswith("language_model.") and k != EMBED_KEY]

    weight_map = index_of(blip2_tiny_dir)
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    decoder_only = {s for s, keys in by_shard.items() if all(k.startswith(DECODER_LAYERS) for k in keys)}
    assert decoder_only, "the tiny checkpoint should have a shard holding decoder layers only"
    assert not decoder_only & set(log["opened"]), f"decoder-only shards opened: {decoder_only & set(log['opened'])}"
    assert len(log["opened"]) == len(set(log["opened"])), "a shard was opened more than once"


# ------------------------------------------------------------------------------------ shapes, params


@pytest.mark.parametrize("point", POINTS)
def test_prompt_shape_text_dim_and_dtype(blip2_tiny, point):
    adapter = blip2_tiny(point)
    images = mixed_images()[:3]
    px = adapter.preprocess(images)
    feats = adapter.vision_features(px)
    prompt = adapter.resample(feats)
    assert feats.ndim == 3 and feats.shape[0] == 3
    assert prompt.shape == (3, *adapter.prompt_shape)
    assert adapter.prompt_shape == ((8, 48) if point == "projected" else (8, 32))
    emb, _ = adapter.embed_text(TEXTS)
    assert emb.shape[-1] == adapter.text_dim == 48
    for t in (px, feats, prompt, emb):
        assert t.dtype == torch.float32


@pytest.mark.parametrize("point", POINTS)
def test_resampler_parameters(blip2_tiny, point):
    adapter = blip2_tiny(point)
    params = adapter.resampler_parameters()
    ids = {id(p) for p in params}
    assert len(ids) == len(params), "a parameter is listed twice"
    assert all(isinstance(p, torch.nn.Parameter) for p in params)

    assert id(adapter.parts.query_tokens) in ids
    qformer = {id(p) for p in adapter.parts.qformer.parameters()}
    assert qformer and qformer <= ids
    projection = {id(p) for p in adapter.parts.language_projection.parameters()}
    assert len(projection) == 2
    if point == "projected":
        assert projection <= ids
    else:
        assert not projection & ids
    vision = {id(p) for p in adapter.parts.vision_model.parameters()}
    assert vision and not vision & ids
    assert id(adapter.embeddings.weight) not in ids
    expected = {id(adapter.parts.query_tokens)} | qformer | (projection if point == "projected" else set())
    assert ids == expected


# ------------------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_stable_and_names_the_point(blip2_tiny):
    first = blip2_tiny("projected", fresh=True).fingerprint()
    second = blip2_tiny("projected", fresh=True).fingerprint()
    assert first == second
    assert blip2_tiny("resampler").fingerprint() != first


def _copy_with_changed_tensor(src: Path, dst: Path, key: str) -> None:
    shutil.copytree(src, dst)
    shard = dst / index_of(dst)[key]
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(shard))
    tensors[key] = tensors[key] + 0.25
    save_file(tensors, str(shard), metadata=metadata)


def test_fingerprint_follows_weight_content(blip2_tiny, blip2_tiny_dir, tmp_path):
    key = "qformer.encoder.layer.0.attention.attention.query.weight"
    assert key in index_of(blip2_tiny_dir)
    same = tmp_path / "same" / blip2_tiny_dir.name
    changed = tmp_path / "changed" / blip2_tiny_dir.name
    shutil.copytree(blip2_tiny_dir, same)
    _copy_with_changed_tensor(blip2_tiny_dir, changed, key)

    def card(path: Path) -> ModelCard:
        return ModelCard(name="blip2-local", family="blip2", checkpoint=str(path))

    original = blip2_tiny("projected")
    copy = blip2_tiny("projected", card=card(same))
    modified = blip2_tiny("projected", card=card(changed))

    assert copy.fingerprint() == original.fingerprint()
    assert modified.fingerprint() != original.fingerprint()
    # the change really reached the loaded weights (so the new fingerprint is needed)
    px = original.preprocess(square_scenes(2))
    assert torch.equal(copy.visual_prompt(px), original.visual_prompt(px))
    assert not torch.equal(modified.visual_prompt(px), original.visual_prompt(px))


# ------------------------------------------------------------------------------ batch, determinism


@pytest.mark.parametrize("point", POINTS)
def test_batch_invariance_and_determinism(blip2_tiny, point):
    adapter = blip2_tiny(point)
    images = mixed_images()[:4]
    batch = adapter.visual_prompt(adapter.preprocess(images))
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im])) for im in images])
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    again = adapter.visual_prompt(adapter.preprocess(images))
    assert torch.equal(batch, again)
    assert not batch.requires_grad


# ---------------------------------------------------------------------------------- materialise


def test_materialise_is_idempotent(tiny_cache, blip2_tiny_dir, monkeypatch):
    first = builds.materialise("blip2-tiny", tiny_cache)
    mtime = (first / "config.json").stat().st_mtime_ns
    listing = sorted(p.name for p in first.iterdir())

    def must_not_build(out):
        raise AssertionError("materialise rebuilt an existing tiny checkpoint")

    monkeypatch.setitem(builds.BUILDS, "blip2-tiny", builds.Build(must_not_build))
    second = builds.materialise("blip2-tiny", tiny_cache)
    assert second == first == blip2_tiny_dir
    assert (second / "config.json").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in second.iterdir()) == listing
    assert not [p for p in second.parent.iterdir() if p.name.startswith(".")], "a temporary build dir was left"


# ---------------------------------------------------------------------------------------- errors


def test_local_directory_without_weights_is_a_clear_error(tmp_path, blip2_tiny_dir, tiny_cache):
    empty = tmp_path / "not-a-checkpoint"
    empty.mkdir()
    shutil.copy(blip2_tiny_dir / "config.json", empty / "config.json")
    card = ModelCard(name="broken", family="blip2", checkpoint=str(empty))
    with pytest.raises(SpatialbenchError) as err:
        Blip2Adapter.load(card, cache_dir=tiny_cache)
    assert str(empty) in str(err.value)


def test_unknown_tiny_name_is_a_clear_error(tiny_cache):
    card = ModelCard(name="nope", family="blip2", checkpoint="tiny:blip2-nope")
    with pytest.raises(SpatialbenchError) as err:
        Blip2Adapter.load(card, cache_dir=tiny_cache)
    assert "blip2-nope" in str(err.value)
    assert "blip2-tiny" in str(err.value)  # the fix lists the names that exist


def _snapshot(hub_cache: Path, repo_id: str, commit: str) -> Path:
    """An empty snapshot of `repo_id` at `commit` in the Hub cache layout, with refs/main pointing at it."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    return snapshot


def test_uncached_hub_checkpoint_offline_is_a_clear_error_without_network(tmp_path, tiny_cache, monkeypatch):
    _, attempts = isolated_offline_hub(tmp_path, monkeypatch)

    card = ModelCard(name="blip2-opt", family="blip2", checkpoint="Salesforce/blip2-opt-2.7b")
    with pytest.raises(SpatialbenchError) as err:
        Blip2Adapter.load(card, cache_dir=tiny_cache)
    text = str(err.value)
    assert "Salesforce/blip2-opt-2.7b" in text
    assert "HF_HUB_OFFLINE" in text or "offline" in text.lower()
    assert err.value.fix and "local directory" in err.value.fix
    assert not attempts


def test_cached_hub_checkpoint_loads_offline_without_its_decoder_only_shards(
    tmp_path, tiny_cache, blip2_tiny, blip2_tiny_dir, monkeypatch
):
    """The Hub path: metadata from the cache, weight shards fetched lazily, and only those extraction needs."""
    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    snapshot = _snapshot(hub_cache, "someorg/blip2-cached", commit)
    weight_map = index_of(blip2_tiny_dir)
    needed = {weight_map[k] for k in blip2_tiny("projected").loaded_keys}
    assert needed < set(weight_map.values())
    for p in blip2_tiny_dir.iterdir():
        if p.suffix == ".json" or p.name in needed:  # the decoder-only shards are not in the cache
            shutil.copy(p, snapshot / p.name)

    card = ModelCard(name="cached", family="blip2", checkpoint="someorg/blip2-cached")
    adapter = blip2_tiny("projected", card=card)
    assert adapter.fingerprint() == f"blip2|someorg/blip2-cached@{commit}|projected|float32"
    reference = blip2_tiny("projected")
    px = reference.preprocess(square_scenes(2))
    assert torch.equal(adapter.visual_prompt(px), reference.visual_prompt(px))
    assert not attempts


def test_offline_fix_names_a_cli_that_exists(tmp_path, tiny_cache, monkeypatch):
    isolated_offline_hub(tmp_path, monkeypatch)
    card = ModelCard(name="blip2-opt", family="blip2", checkpoint="Salesforce/blip2-opt-2.7b")
    with pytest.raises(SpatialbenchError) as err:
        Blip2Adapter.load(card, cache_dir=tiny_cache)
    assert "huggingface-cli" not in err.value.fix
    assert "hf download Salesforce/blip2-opt-2.7b" in err.value.fix


def test_cached_metadata_without_weights_offline_is_a_clear_error(tmp_path, tiny_cache, blip2_tiny_dir, monkeypatch):
    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = _snapshot(hub_cache, "someorg/blip2-meta-only", commit)
    for p in blip2_tiny_dir.glob("*.json"):  # what the metadata-only snapshot_download fetches
        shutil.copy(p, snapshot / p.name)

    card = ModelCard(name="meta-only", family="blip2", checkpoint="someorg/blip2-meta-only")
    try:
        Blip2Adapter.load(card, cache_dir=tiny_cache)
    except SpatialbenchError as e:
        assert "someorg/blip2-meta-only" in str(e)
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"raw {type(e).__module__}.{type(e).__name__} escaped: {e}") from e
    else:
        raise AssertionError("loading a checkpoint whose weights are not cached succeeded offline")
    assert not attempts


# -------------------------------------------------------------------------------------- registry


def test_family_registry():
    assert get_family("blip2") is Blip2Adapter
    assert Blip2Adapter.family == "blip2"
    with pytest.raises(SpatialbenchError) as err:
        get_family("blip")
    assert "blip2" in str(err.value)
    assert err.value.fix and "did you mean" in err.value.fix and "blip2" in err.value.fix
    with pytest.raises(SpatialbenchError, match="known families: .*blip2"):
        get_family("zzzzzz")


def test_extraction_prefixes_cover_the_parts():
    assert set(EXTRACTION_PREFIXES) == {"vision_model.", "qformer.", "query_tokens", "language_projection."}


def test_a_bin_only_hub_checkpoint_loads_offline_from_its_needed_shards_only(
    tmp_path, tiny_cache, blip2_tiny, blip2_tiny_dir, monkeypatch
):
    """Many fine-tuned checkpoints ship only pytorch_model-*.bin shards and their index: read them
    weights-only, shard by shard, through the Hub cache; the decoder-only shards are never needed."""
    import json

    hub_cache, attempts = isolated_offline_hub(tmp_path, monkeypatch)
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    snapshot = _snapshot(hub_cache, "someorg/blip2-bin-only", commit)
    safetensors_map = index_of(blip2_tiny_dir)
    shards = sorted(set(safetensors_map.values()))
    renamed = {s: f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i, s in enumerate(shards)}
    needed = {renamed[safetensors_map[k]] for k in blip2_tiny("projected").loaded_keys}
    assert needed < set(renamed.values())
    for shard, name in renamed.items():
        if name in needed:  # the decoder-only shards are not in the cache
            torch.save(load_file(str(blip2_tiny_dir / shard)), snapshot / name)
    for p in blip2_tiny_dir.glob("*.json"):
        if p.name != loading.INDEX:
            shutil.copy(p, snapshot / p.name)
    (snapshot / loading.BIN_INDEX).write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: renamed[s] for k, s in safetensors_map.items()}}))

    card = ModelCard(name="bin-only", family="blip2", checkpoint="someorg/blip2-bin-only")
    adapter = blip2_tiny("projected", card=card)
    reference = blip2_tiny("projected")
    px = reference.preprocess(square_scenes(2))
    assert torch.equal(adapter.visual_prompt(px), reference.visual_prompt(px))
    assert adapter.loaded_keys == reference.loaded_keys
    assert not attempts


def test_a_t5_whose_table_is_stored_only_under_a_tied_alias_loads_and_a_missing_table_is_named(
    tmp_path, tiny_cache, blip2_tiny
):
    import json

    source = builds.materialise("blip2-t5-tiny", tiny_cache)
    t5 = ModelCard(name="blip2-t5-tiny", family="blip2", checkpoint=str(source))
    reference = blip2_tiny("projected", card=t5)
    shared, alias = "language_model.shared.weight", "language_model.encoder.embed_tokens.weight"
    assert shared in reference.loaded_keys

    def without_shared(directory: Path, rename: bool) -> Path:
        shutil.copytree(source, directory)
        index = json.loads((directory / loading.INDEX).read_text())
        shard = directory / index["weight_map"].pop(shared)
        with safe_open(str(shard), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(shard))
        table = tensors.pop(shared)
        if rename:
            tensors[alias] = table
            index["weight_map"][alias] = shard.name
        save_file(tensors, str(shard), metadata=metadata)
        (directory / loading.INDEX).write_text(json.dumps(index))
        return directory

    aliased = without_shared(tmp_path / "aliased", rename=True)
    adapter = blip2_tiny("projected", card=ModelCard(name="aliased", family="blip2", checkpoint=str(aliased)))
    assert alias in adapter.loaded_keys
    texts = ["the red circle is left of the blue square"]
    assert torch.equal(adapter.embed_text(texts)[0], reference.embed_text(texts)[0])

    missing = without_shared(tmp_path / "missing", rename=False)
    with pytest.raises(SpatialbenchError) as err:
        Blip2Adapter.load(ModelCard(name="missing", family="blip2", checkpoint=str(missing)), cache_dir=tiny_cache)
    assert shared in str(err.value) and alias in str(err.value)
