"""The conformance check passes good adapters and catches broken ones."""

import pytest
import torch
from typer.testing import CliRunner

from spatialbench.adapters.families import get_family
from spatialbench.adapters.blip2 import Blip2Adapter
from spatialbench.cli import app
from spatialbench.registry import ModelRegistry
from spatialbench.specs import ModelCard
from spatialbench.testing import assert_conformant, run_checks


@pytest.mark.parametrize("name", ["blip2-tiny", "instructblip-tiny", "idefics-tiny", "idefics2-tiny", "kosmos2-tiny",
                                  "llava-tiny", "generic-blip2-tiny"])
def test_every_family_tiny_card_is_conformant(name):
    checks = assert_conformant(name)
    assert any(c.name.startswith("prompt equals") and c.status == "pass" for c in checks)
    assert sum(c.status == "pass" for c in checks) >= 10
    layers = {c.name: c for c in checks}["every declared layer equals the model's own hidden state"]
    # the generic family runs a user's method and declares no layers; the six named families declare theirs
    assert layers.status == ("n/a" if name == "generic-blip2-tiny" else "pass"), layers.detail


def test_the_check_catches_a_layer_the_adapter_computes_differently_from_the_model(monkeypatch):
    load = Blip2Adapter.load

    def drifting(*args, **kwargs):
        adapter = load(*args, **kwargs)
        first = adapter.parts.qformer.encoder.layer[0]  # the adapter's own module, not the reference model's
        first.register_forward_hook(lambda m, a, out: (out[0] * 1.001, *out[1:]) if isinstance(out, tuple) else out * 1.001)
        return adapter

    monkeypatch.setattr(Blip2Adapter, "load", drifting)
    checks = {c.name: c for c in run_checks(ModelRegistry().get("blip2-tiny"))}
    layers = checks["every declared layer equals the model's own hidden state"]
    assert layers.status == "fail" and "resampler.1: max |diff|" in layers.detail
    assert "vision.1" not in layers.detail  # the vision layers before it still match


def _statuses(checks):
    return {c.name: c.status for c in checks}


def test_the_check_catches_a_prompt_that_is_not_what_the_llm_reads(monkeypatch):
    monkeypatch.setattr(Blip2Adapter, "resample", lambda self, f, text=None: self.parts.resample(f, True) * 1.001)
    checks = _statuses(run_checks(ModelRegistry().get("blip2-tiny")))
    assert checks["prompt equals the model's own LLM input"] == "fail"


def test_the_check_catches_a_cached_tensor_that_does_not_map_to_the_prompt(monkeypatch):
    original = Blip2Adapter.finish
    monkeypatch.setattr(Blip2Adapter, "finish", lambda self, stored: original(self, stored) * 1.001)
    checks = _statuses(run_checks(ModelRegistry().get("blip2-tiny")))
    assert checks["[projected] cached tensor maps to the prompt"] == "fail"
    assert checks["[resampler] cached tensor maps to the prompt"] == "n/a"


def test_the_check_catches_wrong_resampler_parameters(monkeypatch):
    monkeypatch.setattr(Blip2Adapter, "resampler_parameters", lambda self: list(self.parts.vision_model.parameters()))
    checks = _statuses(run_checks(ModelRegistry().get("blip2-tiny")))
    assert checks["[projected] resampler_parameters() is what joint training moves"] == "fail"
    assert checks["[resampler] resampler_parameters() is what joint training moves"] == "fail"


def test_the_check_catches_text_leaking_into_a_text_blind_family(monkeypatch):
    original = Blip2Adapter.resample

    def reads_text(self, features, text=None):
        out = original(self, features, text)
        return out + (len(text[0]) if text else 0)

    monkeypatch.setattr(Blip2Adapter, "resample", reads_text)
    checks = _statuses(run_checks(ModelRegistry().get("blip2-tiny")))
    assert checks["[projected] text conditioning as declared"] == "fail"


def test_the_check_catches_identical_prompts(monkeypatch):
    monkeypatch.setattr(Blip2Adapter, "vision_features",
                        lambda self, px: self.parts.vision_model(pixel_values=torch.zeros_like(px)).last_hidden_state)
    checks = _statuses(run_checks(ModelRegistry().get("blip2-tiny")))
    assert checks["[projected] different images give different prompts"] == "fail"


def test_check_adapter_command_prints_a_table_and_sets_the_exit_code(monkeypatch):
    result = CliRunner().invoke(app, ["check-adapter", "blip2-tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "[projected] batch of 8 equals 8 batches of 1" in result.output and "conformant" in result.output
    monkeypatch.setattr(Blip2Adapter, "resample", lambda self, f, text=None: self.parts.resample(f, True) * 2)
    result = CliRunner().invoke(app, ["check-adapter", "blip2-tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "fail" in result.output
    assert get_family("blip2") is Blip2Adapter


def test_a_check_that_raises_is_a_failed_check_and_the_others_still_run(monkeypatch):
    def broken(self, stored):
        raise RuntimeError("projection weights on another device")

    monkeypatch.setattr(Blip2Adapter, "finish", broken)
    checks = run_checks(ModelRegistry().get("blip2-tiny"))
    failed = {c.name: c.detail for c in checks if c.status == "fail"}
    assert failed == {"[projected] cached tensor": "raised RuntimeError: projection weights on another device"}
    assert _statuses(checks)["[projected] batch of 8 equals 8 batches of 1"] == "pass"
    result = CliRunner().invoke(app, ["check-adapter", "blip2-tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 1 and "projection weights on another device" in result.output
    assert "Traceback" not in result.output


def test_a_blip2_with_a_seq2seq_llm_is_compared_with_its_own_model():
    # Blip2ForConditionalGeneration with Flan-T5 needs a decoder input; the reference used to crash there.
    card = ModelCard(name="blip2-t5-tiny", family="blip2", checkpoint="tiny:blip2-t5-tiny")
    checks = _statuses(assert_conformant(card))
    assert checks["prompt equals the model's own LLM input"] == "pass"
