"""The InstructBLIP adapter against the model itself, on tiny checkpoints built in code (LLaMA and T5 LLMs).

Every exactness test runs InstructBlipForConditionalGeneration the way a user does, on what its own
InstructBlipProcessor makes of the images and the instruction, and compares with what the model feeds its
language model (captured with hooks). The instruction reaches the Q-Former, so the tests use non-empty,
unequal-length instructions as well as the empty one the adapter uses when no text is given.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spatialbench.adapters import loading
from spatialbench.adapters.families import get_family
from spatialbench.adapters.instructblip import (
    EXTRACTION_PREFIXES,
    QFORMER_TOKENIZER,
    InstructBlipAdapter,
    shape_at,
)
from spatialbench.adapters.loading import dtype_plan, input_embedding_key
from spatialbench.adapters.tiny.builds import materialise
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry
from spatialbench.specs import ModelCard

from .helpers import RecordingHandle, mixed_images, square_scenes

CARDS = {
    "llama": ModelCard(name="instructblip-tiny", family="instructblip", checkpoint="tiny:instructblip-tiny"),
    "t5": ModelCard(name="instructblip-t5-tiny", family="instructblip", checkpoint="tiny:instructblip-t5-tiny"),
}
EMBED_KEY = {"llama": "language_model.model.embed_tokens.weight", "t5": "language_model.shared.weight"}
POINTS = ("resampler", "projected", "vision_patches")
# Unequal lengths (the Q-Former pads them), one empty; every word is in the tiny vocabularies.
TEXTS = ["what is left of the red circle", "left", "the blue square is above the triangle", "",
         "where is the green shape"]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dirs(tiny_cache) -> dict[str, Path]:
    return {lm: materialise(card.checkpoint.removeprefix("tiny:"), tiny_cache) for lm, card in CARDS.items()}


@pytest.fixture(scope="module")
def ib(tiny_cache, dirs):
    """ib(point, lm, dtype) -> adapter for a tiny card, cached; fresh=True or card=... always loads anew."""
    cache = {}

    def load(point="projected", lm="llama", dtype="float32", *, fresh=False, card=None):
        if fresh or card is not None:
            card = card or CARDS[lm].model_copy(update={"dtype": dtype})
            return InstructBlipAdapter.load(card, cache_dir=tiny_cache, point=point)
        if (point, lm, dtype) not in cache:
            card = CARDS[lm].model_copy(update={"dtype": dtype})
            cache[point, lm, dtype] = InstructBlipAdapter.load(card, cache_dir=tiny_cache, point=point)
        return cache[point, lm, dtype]

    return load


@pytest.fixture(scope="module")
def full(dirs):
    """full(lm, dtype) -> the whole tiny model and its processor, loaded the ordinary transformers way."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    cache = {}

    def get(lm="llama", dtype=torch.float32):
        if (lm, dtype) not in cache:
            model = InstructBlipForConditionalGeneration.from_pretrained(dirs[lm], dtype=dtype).eval()
            cache[lm, dtype] = model, InstructBlipProcessor.from_pretrained(dirs[lm])
        return cache[lm, dtype]

    return get


def run_full_model(model, processor, images, texts: list[str]) -> dict[str, torch.Tensor]:
    """Run the model on processor(images, texts); capture the LLM input, the Q-Former and vision outputs."""
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    if not model.config.use_decoder_only_language_model:
        inputs["decoder_input_ids"] = torch.zeros((len(images), 1), dtype=torch.long)
    captured = {"inputs": inputs}

    def grab(name, take):
        return lambda module, args, kwargs, *out: captured.__setitem__(name, take(kwargs, *out).detach().clone())

    handles = [
        model.language_model.register_forward_pre_hook(grab("lm", lambda kw: kw["inputs_embeds"]), with_kwargs=True),
        model.qformer.register_forward_hook(grab("qformer", lambda kw, out: out[0]), with_kwargs=True),
        model.vision_model.register_forward_hook(grab("vision", lambda kw, out: out[0]), with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    q = model.config.num_query_tokens
    assert (inputs["input_ids"][:, :q] == model.config.image_token_id).all()  # the processor put the image first
    return captured


def index_of(checkpoint_dir: Path) -> dict[str, str]:
    return json.loads((checkpoint_dir / loading.INDEX).read_text())["weight_map"]


# ------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("lm", ["llama", "t5"])
def test_preprocess_and_instruction_are_what_the_processor_makes(ib, full, lm):
    adapter = ib("projected", lm)
    _, processor = full(lm)
    images = mixed_images()
    made = processor(images=images, text=TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(adapter.preprocess(images), made["pixel_values"])
    ins = adapter.instruction(TEXTS, len(TEXTS))
    assert torch.equal(ins["qformer_input_ids"], made["qformer_input_ids"])
    assert torch.equal(ins["qformer_attention_mask"], made["qformer_attention_mask"])
    # no text: the empty instruction, which the BERT-style Q-Former tokenizer makes [CLS] [SEP]
    empty = adapter.instruction(None, 2)
    assert torch.equal(empty["qformer_input_ids"], processor(text=["", ""], return_tensors="pt")["qformer_input_ids"])
    cls_sep = adapter.qformer_tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]"])
    assert empty["qformer_input_ids"].tolist() == [cls_sep] * 2 and empty["qformer_attention_mask"].all()
    # the Q-Former tokenizer is its own (subfolder), not the LLM's
    assert (adapter.checkpoint.root / QFORMER_TOKENIZER / "tokenizer.json").is_file()
    assert adapter.qformer_tokenizer.get_vocab() != adapter.tokenizer.get_vocab()


@pytest.mark.parametrize("lm", ["llama", "t5"])
@pytest.mark.parametrize("with_text", [True, False], ids=["instruction", "empty"])
def test_prompt_is_exactly_what_the_language_model_reads_at_every_point(ib, full, lm, with_text):
    model, processor = full(lm)
    q = model.config.num_query_tokens
    images = mixed_images()
    texts = TEXTS if with_text else None
    got = run_full_model(model, processor, images, TEXTS if with_text else [""] * len(images))
    px = ib("projected", lm).preprocess(images)

    projected = ib("projected", lm).visual_prompt(px, texts)
    assert projected.shape == (len(images), q, model.config.text_config.hidden_size)
    assert torch.equal(projected, got["lm"][:, :q])
    assert torch.equal(ib("resampler", lm).visual_prompt(px, texts), got["qformer"][:, :q])
    assert torch.equal(ib("vision_patches", lm).visual_prompt(px, texts), got["vision"])
    # the two halves are also right on their own
    adapter = ib("projected", lm)
    assert torch.equal(adapter.resample(adapter.vision_features(px), texts), projected)
    if with_text:  # the instruction really moves the prompt, so comparing with it is not vacuous
        assert not torch.equal(projected, adapter.visual_prompt(px))


def test_reference_prompts_match_the_processor_driven_run(ib, full):
    model, processor = full("llama")
    images = mixed_images()[:3]
    got = run_full_model(model, processor, images, TEXTS[:3])
    reference = ib("projected").reference_prompts(ib("projected").preprocess(images), TEXTS[:3])
    q = model.config.num_query_tokens
    assert torch.equal(reference["projected"], got["lm"][:, :q])
    assert torch.equal(reference["resampler"], got["qformer"][:, :q])
    assert torch.equal(reference["vision_patches"], got["vision"])


@pytest.mark.parametrize("lm", ["llama", "t5"])
def test_embed_text_is_the_models_own_input_embedding(ib, full, lm):
    adapter = ib("projected", lm)
    model, processor = full(lm)
    q = model.config.num_query_tokens
    texts = TEXTS[:3]
    emb, mask = adapter.embed_text(texts)
    ids = adapter.tokenizer(texts, padding=True, return_tensors="pt")["input_ids"]
    assert (ids != adapter.tokenizer.unk_token_id).all(), "test texts must be in the tiny vocabulary"
    assert emb.shape == (len(texts), ids.shape[1], adapter.text_dim) and mask.shape == ids.shape
    assert mask.tolist() == (ids != adapter.tokenizer.pad_token_id).long().tolist()
    with torch.no_grad():
        assert torch.equal(emb, model.get_input_embeddings()(ids))
    got = run_full_model(model, processor, mixed_images()[:3], texts)
    assert torch.equal(got["lm"][:, q:], emb)  # the text positions of what the LLM reads
    assert adapter.loaded_keys >= {EMBED_KEY[lm]}


@pytest.mark.parametrize("lm", ["llama", "t5"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_dtypes_and_prompts_are_the_models(ib, full, lm, dtype):
    name = str(dtype).removeprefix("torch.")
    model, processor = full(lm, dtype)
    projected, resampler = ib("projected", lm, name), ib("resampler", lm, name)
    # every extraction parameter has the dtype from_pretrained gives it (the _keep_in_fp32_modules plan)
    theirs = dict(model.named_parameters())
    ours = dict(projected.parts.named_parameters())
    assert {k: v.dtype for k, v in ours.items()} == {k: theirs[k].dtype for k in ours}
    fp32 = {k for k, v in ours.items() if v.dtype == torch.float32}
    if dtype == torch.bfloat16:
        assert not fp32
    elif lm == "llama":
        assert fp32 == {"query_tokens"}
    else:  # T5's "wo" pattern also matches the Q-Former's word_embeddings, as in transformers
        assert fp32 == {"query_tokens", "qformer.embeddings.word_embeddings.weight"}

    images = mixed_images()
    px = projected.preprocess(images)
    assert px.dtype == dtype
    got = run_full_model(model, processor, images, TEXTS)
    q = model.config.num_query_tokens
    prompt = projected.visual_prompt(px, TEXTS)
    assert prompt.dtype == got["lm"].dtype == dtype
    assert torch.equal(prompt, got["lm"][:, :q])
    assert torch.equal(resampler.visual_prompt(px, TEXTS), got["qformer"][:, :q])
    assert projected.embed_text(TEXTS)[0].dtype == dtype


# ------------------------------------------------------------------------------- informative prompts


@pytest.mark.parametrize("point", POINTS)
def test_different_images_give_different_prompts(ib, point):
    adapter = ib(point)
    prompts = adapter.visual_prompt(adapter.preprocess(square_scenes(8)))  # [8, Q, D]
    flat = prompts.flatten(1)
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert not torch.allclose(flat[i], flat[j], atol=1e-6), f"images {i} and {j} give the same prompt"
    within = prompts.flatten(1).std(dim=1).mean()
    ratio = (prompts.std(dim=0).mean() / within).item()
    assert ratio > 0.05, f"prompts barely depend on the image (across/within std ratio {ratio:.2e})"
    assert (prompts.std(dim=1).mean() / within).item() > 0.05  # the query tokens are not all alike


@pytest.mark.parametrize("point", ["resampler", "projected"])
def test_the_instruction_changes_the_prompt(ib, point):
    adapter = ib(point)
    texts = ["left", "what is left of the red circle", "the blue square is above the triangle", ""]
    px = adapter.preprocess(square_scenes(1) * len(texts))  # one image, four instructions
    prompts = adapter.visual_prompt(px, texts)
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            assert not torch.allclose(prompts[i], prompts[j], atol=1e-6), f"'{texts[i]}' and '{texts[j]}' agree"
    ratio = (prompts.std(dim=0).mean() / prompts.flatten(1).std(dim=1).mean()).item()
    assert ratio > 0.05, f"prompts barely depend on the instruction (across/within std ratio {ratio:.2e})"
    assert torch.equal(adapter.visual_prompt(px[:2]), adapter.visual_prompt(px[:2], ["", ""]))  # no text: empty
    assert torch.equal(ib("vision_patches").visual_prompt(px[:2], texts[:2])[0],
                       ib("vision_patches").visual_prompt(px[:1])[0])  # the vision encoder reads no text


# ------------------------------------------------------------------------------- selective loading


@pytest.mark.parametrize("lm", ["llama", "t5"])
def test_llm_layers_are_never_read_and_their_shards_never_opened(ib, dirs, lm, monkeypatch):
    real = loading.safe_open
    log = {"opened": [], "read": []}

    def recording_safe_open(path, *args, **kwargs):
        log["opened"].append(Path(path).name)
        return RecordingHandle(real(path, *args, **kwargs), log)

    monkeypatch.setattr(loading, "safe_open", recording_safe_open)
    adapter = ib("projected", lm, fresh=True)

    weight_map = index_of(dirs[lm])
    assert len(set(weight_map.values())) > 1, "the tiny checkpoint should be sharded"
    extraction = {k for k in weight_map if k.startswith(EXTRACTION_PREFIXES)}
    assert adapter.loaded_keys == extraction | {EMBED_KEY[lm]}
    assert set(log["read"]) == adapter.loaded_keys
    assert not [k for k in log["read"] if k.startswith("language_model.") and k != EMBED_KEY[lm]]
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    llm_only = {s for s, keys in by_shard.items() if all(k.startswith("language_model.") for k in keys)
                and EMBED_KEY[lm] not in keys}
    assert llm_only, "the tiny checkpoint should have a shard holding LLM layers only"
    assert not llm_only & set(log["opened"]), f"LLM-only shards opened: {llm_only & set(log['opened'])}"
    assert len(log["opened"]) == len(set(log["opened"])), "a shard was opened more than once"


def test_an_embedding_stored_under_its_tied_name_is_found(ib, dirs, tmp_path):
    """T5 ties encoder.embed_tokens to shared: a checkpoint holding only the former still loads."""
    copy = tmp_path / "t5-tied"
    shutil.copytree(dirs["t5"], copy)
    index = json.loads((copy / loading.INDEX).read_text())
    shard = index["weight_map"].pop(EMBED_KEY["t5"])
    with safe_open(str(copy / shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(copy / shard))
    alias = "language_model.encoder.embed_tokens.weight"
    tensors[alias] = tensors.pop(EMBED_KEY["t5"])
    save_file(tensors, str(copy / shard), metadata=metadata)
    index["weight_map"][alias] = shard
    (copy / loading.INDEX).write_text(json.dumps(index))

    card = ModelCard(name="t5-tied", family="instructblip", checkpoint=str(copy))
    adapter, reference = ib(card=card), ib("projected", "t5")
    assert alias in adapter.loaded_keys and EMBED_KEY["t5"] not in adapter.loaded_keys
    assert torch.equal(adapter.embed_text(TEXTS)[0], reference.embed_text(TEXTS)[0])


def test_a_checkpoint_without_its_qformer_tokenizer_is_a_clear_error(dirs, tiny_cache, tmp_path):
    copy = tmp_path / "no-qformer-tokenizer"
    shutil.copytree(dirs["llama"], copy)
    shutil.rmtree(copy / QFORMER_TOKENIZER)
    with pytest.raises(SpatialbenchError) as err:
        InstructBlipAdapter.load(ModelCard(name="x", family="instructblip", checkpoint=str(copy)), cache_dir=tiny_cache)
    assert QFORMER_TOKENIZER in str(err.value) and str(copy) in str(err.value)
    assert "InstructBlipProcessor" in err.value.fix


# ------------------------------------------------------------------------------------ shapes, params


@pytest.mark.parametrize("lm", ["llama", "t5"])
@pytest.mark.parametrize("point", POINTS)
def test_prompt_shape_is_shape_at(ib, lm, point):
    adapter = ib(point, lm)
    prompt = adapter.visual_prompt(adapter.preprocess(mixed_images()[:3]), TEXTS[:3])
    assert tuple(prompt.shape) == (3, *shape_at(adapter.config, point)) == (3, *adapter.prompt_shape)
    assert adapter.prompt_shape == {"vision_patches": (65, 32), "resampler": (8, 32), "projected": (8, 48)}[point]
    assert adapter.text_dim == 48 and prompt.dtype == adapter.prompt_dtype == torch.float32


@pytest.mark.parametrize("point", ["resampler", "projected"])
@pytest.mark.parametrize("with_text", [True, False], ids=["instruction", "empty"])
def test_resampler_parameters_are_exactly_what_moves_the_prompt(ib, point, with_text):
    adapter = ib(point, fresh=True)  # gradients and flags are changed below
    parts = adapter.parts
    params = adapter.resampler_parameters()
    ids = {id(p) for p in params}
    assert len(ids) == len(params) and all(isinstance(p, torch.nn.Parameter) for p in params)
    vision = {id(p) for p in parts.vision_model.parameters()}
    projection = {id(p) for p in parts.language_projection.parameters()}
    last = parts.qformer.encoder.layer[-1]
    dead = {id(p) for m in (last.intermediate, last.output) for p in m.parameters()}  # text states nothing reads
    qformer = {id(p) for p in parts.qformer.parameters()} - dead
    assert dead and vision and not (vision | dead) & ids and id(adapter.embeddings.weight) not in ids
    assert ids == {id(parts.query_tokens)} | qformer | (projection if point == "projected" else set())

    for p in adapter.parameters():
        p.requires_grad_(True)
    px = adapter.preprocess(mixed_images()[:2])
    adapter.resample(adapter.vision_features(px).detach(), TEXTS[:2] if with_text else None).sum().backward()
    moved = {id(p) for p in adapter.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == ids, f"{len(ids - moved)} chosen parameters got no gradient, {len(moved - ids)} others did"


@pytest.mark.parametrize("point", ["resampler", "projected"])
def test_batch_invariance_and_determinism(ib, point):
    adapter = ib(point)
    images, texts = mixed_images()[:4], TEXTS[:4]
    batch = adapter.visual_prompt(adapter.preprocess(images), texts)  # instructions padded to the longest
    singles = torch.cat([adapter.visual_prompt(adapter.preprocess([im]), [t]) for im, t in zip(images, texts)])
    # Padding the instructions changes the shapes of the matmuls, so the fp32 sums round differently (2e-5 seen on
    # an AMD EPYC); a padding leak would differ by orders of magnitude more.
    torch.testing.assert_close(batch, singles, atol=1e-4, rtol=0)
    assert torch.equal(batch, adapter.visual_prompt(adapter.preprocess(images), texts))
    assert not batch.requires_grad
    with pytest.raises(ValueError):
        adapter.visual_prompt(adapter.preprocess(images), texts[:3])


def test_the_conformance_check_passes(tiny_cache):
    from spatialbench.testing import assert_conformant

    checks = assert_conformant(CARDS["llama"], cache_dir=tiny_cache)
    assert any(c.status == "pass" and "bit-equal" in c.detail for c in checks)


def test_fingerprint_names_checkpoint_point_and_dtype(ib):
    first = ib("projected", fresh=True).fingerprint()
    assert first == ib("projected", fresh=True).fingerprint()
    assert first.startswith("instructblip|local:instructblip-tiny-") and first.endswith("|projected|float32")
    assert ib("resampler").fingerprint() != first != ib("projected", "llama", "float16").fingerprint()
    assert ib("projected", "t5").fingerprint() != first


# ------------------------------------------------------------------------------- cards and registry


def test_cards_and_family():
    cards = ModelRegistry()
    assert cards.get("instructblip").checkpoint == "Salesforce/instructblip-vicuna-7b"
    assert cards.get("instructblip-flant5xl").checkpoint == "Salesforce/instructblip-flan-t5-xl"
    assert cards.get("instructblip-tiny").checkpoint == "tiny:instructblip-tiny"
    for name in ("instructblip", "instructblip-flant5xl", "instructblip-tiny"):
        assert cards.get(name).family == "instructblip"
    assert get_family("instructblip") is InstructBlipAdapter and InstructBlipAdapter.reads_text


# ------------------------------------------------------------------------------- real size, no weights

VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
              image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True)
QFORMER = dict(vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, max_position_embeddings=512, cross_attention_frequency=2,
               encoder_hidden_size=1408)
REAL = {  # hyperparameters written out from the published config.json files
    "Salesforce/instructblip-vicuna-7b": ("llama", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32001,
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False), (32, 4096)),
    "Salesforce/instructblip-flan-t5-xl": ("t5", dict(
        d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, num_decoder_layers=24, vocab_size=32128,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False), (32, 2048)),
}


@pytest.mark.parametrize("repo", list(REAL))
def test_real_size_shapes_on_the_meta_device(repo):
    """The released models, weightless: their prompt path agrees with shape_at, 32x768 raw."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import CONFIG_MAPPING, InstructBlipConfig, InstructBlipForConditionalGeneration

    model_type, text, projected = REAL[repo]
    config = InstructBlipConfig(vision_config=VISION, qformer_config=QFORMER,
                                text_config=CONFIG_MAPPING[model_type](**text).to_dict(), num_query_tokens=32)
    with torch.device("meta"):
        model = InstructBlipForConditionalGeneration(config)
    qformer_size = sum(p.numel() for p in model.qformer.parameters()) + model.query_tokens.numel()
    assert qformer_size == pytest.approx(186e6, rel=0.01)
    # Fake tensors carry shapes through the Q-Former's data-dependent mask code, which meta tensors cannot.
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        out = model.get_image_features(  # what forward() scatters into the LLM's inputs_embeds
            pixel_values=torch.empty(1, 3, 224, 224, device="meta"),
            qformer_input_ids=torch.zeros(1, 6, dtype=torch.long, device="meta"), return_dict=True)
    assert tuple(out.vision_outputs.last_hidden_state.shape[1:]) == shape_at(config, "vision_patches") == (257, 1408)
    assert tuple(out.qformer_outputs[0][:, :32].shape[1:]) == shape_at(config, "resampler") == (32, 768)
    assert tuple(out.pooler_output.shape[1:]) == shape_at(config, "projected") == projected

    # what load() derives from the same weightless model: the embedding table and the float16 dtype plan
    weight_map = dict.fromkeys(model.state_dict(), "shard")
    assert input_embedding_key(config.text_config, "language_model.", weight_map) == EMBED_KEY[model_type]
    dtype_of = dtype_plan("InstructBlipForConditionalGeneration", config, torch.float16)
    assert dtype_of("query_tokens") == torch.float32
    assert dtype_of("qformer.encoder.layer.0.attention.attention.query.weight") == torch.float16
    word = "qformer.embeddings.word_embeddings.weight"
    assert dtype_of(word) == (torch.float32 if model_type == "t5" else torch.float16)
    assert dtype_plan("InstructBlipForConditionalGeneration", config, torch.bfloat16)("query_tokens") == torch.bfloat16


def test_a_checkpoint_that_stores_the_qformer_position_ids_loads(ib, dirs, tmp_path):
    # Older InstructBLIP checkpoints store this (now non-persistent) buffer; from_pretrained drops it.
    key = "qformer.embeddings.position_ids"
    stored = tmp_path / "stored-position-ids"
    shutil.copytree(dirs["llama"], stored)
    index = json.loads((stored / loading.INDEX).read_text())
    shard = stored / index["weight_map"]["qformer.embeddings.position_embeddings.weight"]
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(shard))
    tensors[key] = torch.arange(tensors["qformer.embeddings.position_embeddings.weight"].shape[0])[None].contiguous()
    save_file(tensors, str(shard), metadata=metadata)
    index["weight_map"][key] = shard.name
    (stored / loading.INDEX).write_text(json.dumps(index))

    loaded = ib(card=ModelCard(name="stored", family="instructblip", checkpoint=str(stored)))
    assert loaded.skipped_keys == [key]
    px = loaded.preprocess(square_scenes(2))
    texts = ["what is left of the red circle", "left"]
    assert torch.equal(loaded.visual_prompt(px, texts), ib().visual_prompt(px, texts))
