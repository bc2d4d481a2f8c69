"""The joint regime and the baselines: what moves, what stays, and what runs how often."""

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from spatialbench.adapters.blip2 import Blip2Adapter
from spatialbench.probing.fit import fit
from spatialbench.results import RunResult, read_results
from spatialbench.runner import Runner
from spatialbench.specs import RunConfig

ALL_BASELINES = ["blind", "random_resampler", "vision_patches"]


def _run(small_tasks, tmp_path, tasks="small_grid,small_vsr", **kw) -> tuple[Runner, RunResult]:
    kw = {"control": False, **kw}
    config = RunConfig(model="blip2-tiny", tasks=[tasks], seeds=2, output=tmp_path / "out", device="cpu",
                       include_paths=[small_tasks], cache_dir=tmp_path / "cache", regime="both",
                       baselines=ALL_BASELINES, **kw)
    runner = Runner(config)
    return runner, runner.run()


def test_both_regimes_baselines_control_and_the_gap_are_reported(small_tasks, tmp_path):
    runner, result = _run(small_tasks, tmp_path, control=True, mdl=True)
    assert result.regimes == ["frozen", "joint"] and result.baselines == ALL_BASELINES
    assert result.resampler_lr == 1e-3  # the card's, recorded with the results
    for name, task in result.tasks.items():
        assert task.status == "ok", task.error
        assert set(task.conditions) == {"frozen", "joint", *ALL_BASELINES}
        gap = task.comparisons["joint_vs_frozen"]
        frozen, joint = (task.conditions[c].metrics[task.headline].mean for c in ("frozen", "joint"))
        assert abs(gap.diff - (joint - frozen)) < 1e-9 and gap.ci95[0] <= gap.diff <= gap.ci95[1]
        assert 0.0 < gap.p_value <= 1.0
        explicit = name == "small_grid"
        for regime in ("frozen", "joint"):
            cond = task.conditions[regime]
            assert (cond.control is not None) == explicit and (cond.selectivity is not None) == explicit
            if explicit:
                assert abs(cond.selectivity.diff - (cond.metrics[task.headline].mean - cond.control.mean)) < 1e-9
            classes = 9 if explicit else 2  # a 3 x 3 grid; true / false
            assert cond.mdl.uniform_bits == pytest.approx(task.n["train"] * math.log2(classes))
            assert cond.mdl.compression == pytest.approx(cond.mdl.uniform_bits / cond.mdl.codelength_bits)
        assert all(task.conditions[b].mdl is None for b in ALL_BASELINES)  # MDL is per regime
        assert task.metrics == task.conditions["frozen"].metrics  # the headline stays the frozen regime
    assert read_results(runner.results_path) == result


def test_every_joint_fit_starts_from_the_checkpoints_resampler(small_tasks, tmp_path):
    runner, result = _run(small_tasks, tmp_path)
    starts = [d for t in result.tasks.values() for d in t.conditions["joint"].resampler_start]
    assert len(starts) == 2 * 2 and len(set(starts)) == 1  # two tasks x two seeds, one starting point
    runner.snapshot.restore()
    assert starts[0] == runner.snapshot.digest()


def _joint_setup(small_tasks, tmp_path, **config):
    from spatialbench.adapters.base import get_family
    from spatialbench.data.sources import load_task_data
    from spatialbench.features import FeatureStore
    from spatialbench.probing import conditions
    from spatialbench.probing.inputs import build_inputs, feature_requests
    from spatialbench.probing.joint import ResamplerSnapshot
    from spatialbench.registry import ModelRegistry, TaskRegistry

    adapter = get_family("blip2").load(ModelRegistry().get("blip2-tiny"))
    task = TaskRegistry([small_tasks]).get("small_grid")
    data = load_task_data(task)
    store, vision = FeatureStore(adapter, tmp_path), FeatureStore(adapter, tmp_path, point="vision_patches")
    vision.ensure(feature_requests(task, data, adapter))
    store.ensure(feature_requests(task, data, adapter), vision=vision)
    inputs = build_inputs(task, data, store, adapter)
    rows = vision.load([(k, None) for k, _ in inputs.row_keys]).float()
    snapshot = ResamplerSnapshot(adapter)
    run = RunConfig(model="blip2-tiny", tasks=["small_grid"], regime="joint", baselines=[], **config)
    [joint] = conditions.plan(run, inputs, rows, adapter, snapshot)
    return adapter, task, joint, snapshot


def test_joint_training_moves_the_resampler_and_never_the_vision_encoder(small_tasks, tmp_path):
    adapter, task, joint, snapshot = _joint_setup(small_tasks, tmp_path)
    vision_before = {n: p.clone() for n, p in adapter.parts.vision_model.named_parameters()}
    resampler_before = [p.clone() for p in adapter.resampler_parameters()]
    fit(joint.inputs, task.probe, 0, task.headline, Accelerator(cpu=True), encoder=joint.encoder(), encoder_lr=1e-2)
    assert all(torch.equal(p, vision_before[n]) for n, p in adapter.parts.vision_model.named_parameters())
    assert any(not torch.equal(p, b) for p, b in zip(adapter.resampler_parameters(), resampler_before))
    snapshot.restore()
    assert all(torch.equal(p, b) for p, b in zip(adapter.resampler_parameters(), resampler_before))


def test_gradient_checkpointing_trains_the_same_resampler(small_tasks, tmp_path):
    """Recomputing activations in backward changes memory, not the arithmetic."""
    trained = []
    for checkpointing in (False, True):
        adapter, task, joint, snapshot = _joint_setup(small_tasks, tmp_path, gradient_checkpointing=checkpointing)
        encoder = joint.encoder()
        assert encoder.checkpointing is checkpointing
        result = fit(joint.inputs, task.probe, 0, task.headline, Accelerator(cpu=True), encoder=encoder,
                     encoder_lr=1e-2)
        trained.append(([p.detach().clone() for p in adapter.resampler_parameters()], result.test_pred))
    (plain, pred_plain), (ckpt, pred_ckpt) = trained
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt))
    assert (pred_plain == pred_ckpt).all()


def test_joint_regime_under_bf16_autocast_trains_the_resampler(small_tasks, tmp_path):
    adapter, task, joint, snapshot = _joint_setup(small_tasks, tmp_path)
    encoder, seen = joint.encoder(), []  # made first: its standardisation pass runs outside training
    hook = adapter.parts.qformer.register_forward_hook(lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")))
    before = [p.clone() for p in adapter.resampler_parameters()]
    AcceleratorState._reset_state(reset_partial_state=True)  # the state is a process-wide singleton
    try:
        fit(joint.inputs, task.probe, 0, task.headline, Accelerator(cpu=True, mixed_precision="bf16"),
            encoder=encoder, encoder_lr=1e-2)
    finally:
        hook.remove()
        AcceleratorState._reset_state(reset_partial_state=True)
    assert seen and all(seen)  # the resampler ran under autocast, not only the probe
    assert any(not torch.equal(p, b) for p, b in zip(adapter.resampler_parameters(), before))


def test_the_cards_resampler_lr_is_the_default_and_the_flag_overrides_it(small_tasks, tmp_path):
    base = dict(model="blip2-tiny", tasks=["small_grid"], include_paths=[small_tasks], regime="joint")
    assert Runner(RunConfig(**base)).resampler_lr == 1e-3  # models/blip2-tiny.yaml
    assert Runner(RunConfig(**base, resampler_lr=5e-4)).resampler_lr == 5e-4


def test_the_vision_encoder_runs_once_per_image_per_run(small_tasks, tmp_path, monkeypatch):
    seen = []
    original = Blip2Adapter.vision_features

    def counting(self, pixel_values):
        seen.append(len(pixel_values))
        return original(self, pixel_values)

    monkeypatch.setattr(Blip2Adapter, "vision_features", counting)
    _, result = _run(small_tasks, tmp_path, tasks="small")
    assert sum(seen) == result.extraction.images == result.extraction.vision_extracted
    assert result.extraction.extracted == result.extraction.prompts  # prompts came from cached vision features


def test_version_1_results_still_read(small_tasks, tmp_path):
    runner, result = _run(small_tasks, tmp_path, tasks="small_vsr")
    v1 = result.model_dump(mode="json")
    v1["schema_version"] = 1
    for key in ("regimes", "baselines", "resampler_lr"):
        v1.pop(key)
    v1["extraction"].pop("vision_extracted")
    for task in v1["tasks"].values():
        task.pop("conditions"), task.pop("comparisons")
    path = tmp_path / "v1.json"
    import json

    path.write_text(json.dumps(v1))
    old = read_results(path)
    assert old.schema_version == 1 and old.tasks["small_vsr"].metrics == result.tasks["small_vsr"].metrics
