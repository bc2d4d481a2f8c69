"""The conformance check every adapter must pass; reusable from a third-party package's own tests.

    from spatialbench.testing import assert_conformant
    def test_my_adapter():
        assert_conformant("my-model-tiny")          # a card name, a card YAML path, or a ModelCard

`spatialbench check-adapter NAME` runs the same checks and prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from ..adapters.base import Adapter
from ..adapters.families import get_family
from ..data.synthetic import generate_scenes, render
from ..registry import resolve_card
from ..specs import ModelCard, SyntheticDataset

ATOL = 1e-5  # batch invariance: kernels may pick other blockings for other batch sizes
TEXTS = ["the red circle is left of the blue square", "is the square above the triangle"]


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail" or "n/a"
    detail: str = ""


def probe_images(n: int = 8, size: int = 224) -> list[Image.Image]:
    """Distinct synthetic scenes: coloured shapes at different places."""
    ds = SyntheticDataset(image_size=size, sizes={"train": 0, "validation": 0, "test": n})
    return [render(scene) for scene in generate_scenes(ds, "test", "conformance")]


def _texts(adapter: Adapter, n: int) -> list[str] | None:
    return [TEXTS[i % len(TEXTS)] for i in range(n)] if adapter.reads_text else None


def _reference(adapter: Adapter, px: torch.Tensor) -> dict[str, torch.Tensor] | str:
    """The full model's own prompts and hidden states, or why there are none."""
    try:
        return adapter.reference_prompts(px, _texts(adapter, len(px)))
    except NotImplementedError as e:
        return f"no reference_prompts: {e}"


def _equal_to_model(adapters: dict[str, Adapter], px: torch.Tensor, reference: dict | str) -> Check:
    if isinstance(reference, str):
        return Check("prompt equals the model's own LLM input", "n/a", reference)
    compared, bad = [], []
    for point, adapter in adapters.items():
        if point not in reference:
            continue
        ours = adapter.visual_prompt(px, _texts(adapter, len(px)))
        compared.append(point)
        if ours.shape != reference[point].shape or not torch.equal(ours, reference[point]):
            diff = (ours.float() - reference[point].float()).abs().max().item() if ours.shape == reference[point].shape else "shape"
            bad.append(f"{point}: max |diff| {diff}")
    if not compared:
        return Check("prompt equals the model's own LLM input", "fail", "reference has none of the adapter's points")
    return Check("prompt equals the model's own LLM input", "fail" if bad else "pass",
                 "; ".join(bad) or f"bit-equal at {', '.join(compared)}")


def _layers_equal_to_model(adapter: Adapter, px: torch.Tensor, reference: dict | str) -> Check:
    """Every declared layer, from the adapter's one forward, bit-equal to the full model's own hidden state
    there, and of the shape it declares."""
    name = "every declared layer equals the model's own hidden state"
    if not adapter.layers:
        return Check(name, "n/a", "the family declares no layers")
    if isinstance(reference, str):
        return Check(name, "n/a", reference)
    if not any(layer in reference for layer in adapter.layers):
        return Check(name, "n/a", "reference_prompts gives none of the declared layers: run the full model inside "
                                  "self.reference_layers(model) and return them with the prompts")
    ours = adapter.prompts_at(px, adapter.layers, _texts(adapter, len(px)))
    bad = []
    for layer in adapter.layers:
        mine, theirs, want = ours[layer], reference.get(layer), (len(px), *adapter.shape_at(layer))
        if theirs is None:
            bad.append(f"{layer}: not in the reference")
        elif tuple(mine.shape) != want:
            bad.append(f"{layer}: shape {tuple(mine.shape)}, declared {want}")
        elif mine.shape != theirs.shape or not torch.equal(mine, theirs):
            diff = (mine.float() - theirs.float()).abs().max().item() if mine.shape == theirs.shape else "shape"
            bad.append(f"{layer}: max |diff| {diff}")
    return Check(name, "fail" if bad else "pass", "; ".join(bad) or f"bit-equal at {', '.join(adapter.layers)}")


def _shape_and_dtype(adapter: Adapter, px: torch.Tensor) -> Check:
    out = adapter.visual_prompt(px, _texts(adapter, len(px)))
    want = (len(px), *adapter.prompt_shape)
    ok = tuple(out.shape) == want and out.dtype == adapter.prompt_dtype
    return Check("shape and dtype as declared", "pass" if ok else "fail",
                 f"{tuple(out.shape)} {out.dtype} (declared {want} {adapter.prompt_dtype})")


def _batch_invariance(adapter: Adapter, px: torch.Tensor) -> Check:
    texts = _texts(adapter, len(px))
    whole = adapter.visual_prompt(px, texts).float()
    singles = torch.cat([adapter.visual_prompt(px[i:i + 1], texts[i:i + 1] if texts else None) for i in range(len(px))])
    diff = (whole - singles.float()).abs().max().item()
    return Check(f"batch of {len(px)} equals {len(px)} batches of 1", "pass" if diff <= ATOL else "fail",
                 f"max |diff| {diff:.2e} (tolerance {ATOL:.0e})")


def _cached_tensor(adapter: Adapter, px: torch.Tensor) -> Check:
    """The feature cache keeps the tensor at stored_point and maps it per batch (Adapter.cached_as): that must
    give the prompt itself."""
    name = "cached tensor maps to the prompt"
    if adapter.stored_point == adapter.point:
        return Check(name, "n/a", "the prompt itself is cached")
    texts = _texts(adapter, len(px))
    with adapter.at_point(adapter.stored_point):
        stored = adapter.visual_prompt(px, texts)
    diff = (adapter.finish(stored).float() - adapter.visual_prompt(px, texts).float()).abs().max().item()
    return Check(name, "pass" if diff <= ATOL else "fail",
                 f"{adapter.stored_point} -> {adapter.point}: max |diff| {diff:.2e} (tolerance {ATOL:.0e})")


def _determinism(adapter: Adapter, px: torch.Tensor) -> Check:
    texts = _texts(adapter, len(px))
    same = torch.equal(adapter.visual_prompt(px, texts), adapter.visual_prompt(px, texts))
    return Check("deterministic", "pass" if same else "fail", "two calls equal" if same else "two calls differ")


def _images_differ(adapter: Adapter, px: torch.Tensor) -> Check:
    out = adapter.visual_prompt(px, _texts(adapter, len(px))).float()
    across = out.std(0).mean().item()
    within = out.std(dim=(1, 2)).mean().item()
    flat = out.flatten(1)
    identical = sum(torch.equal(flat[i], flat[j]) for i in range(len(flat)) for j in range(i + 1, len(flat)))
    ratio = across / max(within, 1e-12)
    ok = identical == 0 and ratio > 0.01
    return Check("different images give different prompts", "pass" if ok else "fail",
                 f"across-image / within-prompt std {ratio:.3f}; identical pairs {identical}")


def _resampler_parameters(adapter: Adapter, px: torch.Tensor) -> Check:
    """The set must exclude the vision encoder and the LLM, and hold every parameter the prompt depends on."""
    if adapter.point == "vision_patches":
        return Check("resampler_parameters() is what joint training moves", "n/a", "vision_patches point")
    chosen = {id(p) for p in adapter.resampler_parameters()}
    everything = adapter.parameters()
    flags = [p.requires_grad for p in everything]
    with torch.no_grad():
        features = adapter.vision_features(px)
    for p in everything:
        p.requires_grad_(True)
        p.grad = None
    try:
        with torch.enable_grad():
            adapter.resample(features.detach(), _texts(adapter, len(px))).float().sum().backward()
        moved = {id(p) for p in everything if p.grad is not None and p.grad.abs().sum() > 0}
        before_resampler = {id(p) for p in everything if id(p) not in moved}
        with torch.enable_grad():  # what the vision encoder owns: parameters with a gradient from vision output
            for p in everything:
                p.grad = None
            adapter.vision_features(px).float().sum().backward()
        vision = {id(p) for p in everything if p.grad is not None}
        llm = set()
        if hasattr(adapter, "embed_text"):
            for p in everything:
                p.grad = None
            with torch.enable_grad():
                emb, _ = adapter.embed_text(TEXTS)
                if emb.requires_grad:
                    emb.float().sum().backward()
            llm = {id(p) for p in everything if p.grad is not None}
    finally:
        for p, flag in zip(everything, flags):
            p.requires_grad_(flag)
            p.grad = None
    missing, leaked = moved - chosen, chosen & (vision | llm)
    ok = bool(chosen) and not missing and not leaked and bool(moved)
    detail = (f"{len(chosen)} chosen, {len(moved)} move the prompt, {len(missing)} of those not chosen, "
              f"{len(leaked)} vision or LLM parameters chosen, {len(chosen & before_resampler)} chosen but unused")
    return Check("resampler_parameters() is what joint training moves", "pass" if ok else "fail", detail)


def _text_conditioning(adapter: Adapter, px: torch.Tensor) -> Check:
    if adapter.point == "vision_patches":
        return Check("text conditioning as declared", "n/a", "vision_patches point")
    one = px[:1].repeat(2, 1, 1, 1)
    a = adapter.visual_prompt(one, TEXTS[:1] * 2 if adapter.reads_text else None)
    b = adapter.visual_prompt(one, TEXTS[1:2] * 2 if adapter.reads_text else None)
    if not adapter.reads_text:
        c = adapter.resample(adapter.vision_features(one), TEXTS[:2])  # text given anyway must be ignored
        ok = torch.equal(a, b) and torch.equal(a, c)
        return Check("text conditioning as declared", "pass" if ok else "fail", "prompt ignores text" if ok
                     else "prompt changed with text, but reads_text is False")
    changed = not torch.equal(a, b)
    return Check("text conditioning as declared", "pass" if changed else "fail",
                 "prompt changes with the instruction" if changed else "prompt ignores the instruction")


PER_POINT: list[Callable[[Adapter, torch.Tensor], Check]] = [
    _shape_and_dtype, _batch_invariance, _determinism, _images_differ, _resampler_parameters, _text_conditioning,
    _cached_tensor,
]


def run_checks(card: ModelCard, *, device: str = "cpu", cache_dir: Path | None = None,
               trust_remote_code: bool = False) -> list[Check]:
    family = get_family(card.family)
    points = [p for p in family.points]
    adapters: dict[str, Adapter] = {}
    for point in points:
        adapters[point] = family.load(card, device=device, cache_dir=cache_dir, point=point,
                                      trust_remote_code=trust_remote_code)
    first = next(iter(adapters.values()))
    px = first.preprocess(probe_images())
    reference = _reference(first, px)  # the full model is loaded once
    checks = [_guarded(_equal_to_model, adapters, px, reference), _guarded(_layers_equal_to_model, first, px, reference),
              _guarded(_checkpoint_read, first)]
    for point, adapter in adapters.items():
        for check in PER_POINT:
            result = _guarded(check, adapter, px)
            result.name = f"[{point}] {result.name}"
            checks.append(result)
    return checks


def _checkpoint_read(adapter: Adapter) -> Check:
    """What loading read and what it skipped (stored copies of non-persistent buffers, which from_pretrained
    drops too): a checkpoint whose layout differs from the one the family was written for shows here."""
    skipped = adapter.skipped_keys
    detail = f"{len(adapter.loaded_keys)} tensors read" + (f"; skipped {skipped}" if skipped else "")
    return Check("checkpoint tensors read", "pass", detail)


def _guarded(check: Callable[..., Check], *args) -> Check:
    """A check that raises is a failed check with its message: one broken path must not hide the others."""
    try:
        return check(*args)
    except Exception as e:  # noqa: BLE001
        return Check(check.__name__.strip("_").replace("_", " "), "fail", f"raised {type(e).__name__}: {e}")


def assert_conformant(card: ModelCard | str | Path, **kwargs) -> list[Check]:
    """Run every check; raise AssertionError listing the failures."""
    checks = run_checks(resolve_card(card), **kwargs)
    failed = [c for c in checks if c.status == "fail"]
    if failed:
        raise AssertionError("adapter is not conformant:\n" + "\n".join(f"  {c.name}: {c.detail}" for c in failed))
    return checks
