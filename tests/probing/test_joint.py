"""The joint regime and the baselines: what moves, what stays, and what runs how often."""

import math

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from spatialbench.adapters.blip2 import Blip2Adapter
from spatialbench.probing.fit import fit
from spatialbench.results import RunResult, read_results
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig

from tests.helpers import write_small_tasks

ALL_BASELINES = ["blind", "oracle", "random_resampler", "vision_patches", "joint_random"]  # --baselines all


VISION_FORWARDS: list[int] = []  # images through the vision encoder during both_run, counted where it runs
BOTH = ["run", "--model", "blip2-tiny", "--tasks", "small_relation,small_grid", "--regime", "both", "--seeds", "2",
        "--device", "cpu", "--no-control", "--resampler-lr", "1e-3"]


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """The command a user types for both regimes and every baseline (without --layers, so the prompts come
    from cached vision features), on small tasks with a two-point probe grid; its vision forwards counted."""
    import yaml
    from typer.testing import CliRunner

    from spatialbench.cli import app

    tmp = tmp_path_factory.mktemp("joint-run")
    tasks = write_small_tasks(tmp / "tasks")
    for name in ("small_relation", "small_grid"):
        spec = yaml.safe_load((tasks / f"{name}.yaml").read_text())
        spec["probe"]["lr"] = [3e-4, 1e-3]
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    original = Blip2Adapter.vision_features

    def counting(self, pixel_values):
        VISION_FORWARDS.append(len(pixel_values))
        return original(self, pixel_values)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Blip2Adapter, "vision_features", counting)
        out = CliRunner().invoke(app, [*BOTH, "--include-path", str(tasks), "--output", str(tmp / "out"),
                                       "--cache-dir", str(tmp / "cache")], env={"COLUMNS": "120"})
    assert out.exit_code == 0, out.output
    return out.output, read_results(tmp / "out" / "blip2-tiny" / "results.json")


def test_both_regimes_baselines_control_and_the_gap_are_reported(golden_run):
    result = RunResult.model_validate(golden_run.result)
    assert result.regimes == ["frozen", "joint"] and result.baselines == ALL_BASELINES
    assert result.resampler_lr == [3e-4, 1e-3]  # the card's grid, recorded with the results
    assert result.joint_training.resampler_mode == "train" and result.joint_training.mixed_precision == "no"
    classes = {"golden_grid": 9, "golden_relation": 4, "golden_vsr": 2}  # a 3 x 3 grid; four relations; true/false
    for name, task in result.tasks.items():
        assert task.status == "ok", task.error
        assert {"frozen", "joint", *ALL_BASELINES} <= set(task.conditions)
        gap = task.comparisons["joint_vs_frozen"]
        frozen, joint = (task.conditions[c].metrics[task.headline].mean for c in ("frozen", "joint"))
        assert abs(gap.diff - (joint - frozen)) < 1e-9 and gap.ci95[0] <= gap.diff <= gap.ci95[1]
        assert 0.0 < gap.p_value <= 1.0
        explicit = name != "golden_vsr"  # a VSR caption has no target of its own to shuffle into a control
        for regime in ("frozen", "joint"):
            cond = task.conditions[regime]
            assert (cond.control is not None) == explicit and (cond.selectivity is not None) == explicit
            if explicit:
                assert abs(cond.selectivity.diff - (cond.metrics[task.headline].mean - cond.control.mean)) < 1e-9
            if name in classes:  # MDL codes class labels; the box task has none
                assert cond.mdl.uniform_bits == pytest.approx(task.n["train"] * math.log2(classes[name]))
                assert cond.mdl.compression == pytest.approx(cond.mdl.uniform_bits / cond.mdl.codelength_bits)
            else:
                assert cond.mdl is None
        assert all(task.conditions[b].mdl is None for b in ALL_BASELINES)  # MDL is per regime
        assert task.metrics == task.conditions["frozen"].metrics  # the headline stays the frozen regime
    assert read_results(golden_run.runner.results_path) == result


def test_every_joint_fit_starts_from_the_checkpoints_resampler(golden_run):
    runner, result = golden_run.runner, RunResult.model_validate(golden_run.result)
    starts = [d for t in result.tasks.values() for d in t.conditions["joint"].resampler_start]
    assert len(starts) == 4 * 2 and len(set(starts)) == 1  # four tasks x two seeds, one starting point
    runner.snapshot.restore()
    assert starts[0] == runner.snapshot.digest()


def _joint_setup(small_tasks, tmp_path, resampler_mode="train", **config):
    from spatialbench.adapters.families import get_family
    from spatialbench.data.sources import load_task_data
    from spatialbench.features import FeatureStore
    from spatialbench.probing import conditions
    from spatialbench.probing.inputs import build_inputs, feature_requests
    from spatialbench.probing.joint import ResamplerSnapshot
    from spatialbench.probing.visual import Visual
    from spatialbench.registry import ModelRegistry, TaskRegistry

    adapter = get_family("blip2").load(ModelRegistry().get("blip2-tiny"))
    task = TaskRegistry([small_tasks]).get("small_grid")
    data = load_task_data(task)
    store, vision = FeatureStore(adapter, tmp_path), FeatureStore(adapter, tmp_path, point="vision_patches")
    vision.ensure(feature_requests(task, data, adapter))
    store.ensure(feature_requests(task, data, adapter), vision=vision)
    inputs = build_inputs(task, data, store, adapter)
    rows = Visual(vision.rows([(k, None) for k, _ in inputs.row_keys]))
    snapshot = ResamplerSnapshot(adapter)
    run = RunConfig(model="blip2-tiny", tasks=["small_grid"], regime="joint", baselines=[], **config)
    [joint] = conditions.plan(run, inputs, rows, adapter, snapshot, resampler_mode=resampler_mode)
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
    assert Runner(RunConfig(**base)).resampler_lr == [3e-4, 1e-3]  # models/blip2-tiny.yaml: a grid
    assert Runner(RunConfig(**base, resampler_lr=5e-4)).resampler_lr == [5e-4]


def test_the_vision_encoder_runs_once_per_image_per_run(both_run):
    _, result = both_run  # two tasks over the same scenes, both regimes, every baseline that reads vision
    assert sum(VISION_FORWARDS) == result.extraction.images == result.extraction.vision_extracted > 0
    assert result.extraction.extracted == result.extraction.prompts  # prompts came from cached vision features


def test_version_1_results_still_read(golden_run, tmp_path):
    import json

    result = RunResult.model_validate(golden_run.result)
    v1 = result.model_dump(mode="json")
    v1["schema_version"] = 1
    for key in ("regimes", "baselines", "resampler_lr", "layers"):
        v1.pop(key)
    v1["extraction"].pop("vision_extracted")
    for task in v1["tasks"].values():
        task.pop("conditions"), task.pop("comparisons")
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    old = read_results(path)
    assert old.schema_version == 1 and old.tasks["golden_vsr"].metrics == result.tasks["golden_vsr"].metrics


def test_the_resampler_trains_with_its_dropout_on_unless_the_card_keeps_eval_mode(small_tasks, tmp_path):
    adapter, task, joint, _ = _joint_setup(small_tasks, tmp_path)
    assert adapter.parts.qformer.config.hidden_dropout_prob > 0  # the tiny Q-Former has dropout to switch
    rows = joint.inputs.features.batch(torch.arange(4))
    encoder = joint.encoder().train()
    assert not torch.equal(encoder(rows, None), encoder(rows, None))  # two train-mode passes differ
    encoder.eval()
    assert torch.equal(encoder(rows, None), encoder(rows, None))
    assert not adapter.parts.qformer.training  # evaluation leaves the resampler as extraction needs it
    _, _, kept, _ = _joint_setup(small_tasks, tmp_path, resampler_mode="eval")
    encoder = kept.encoder().train()
    assert torch.equal(encoder(rows, None), encoder(rows, None))
    assert all(p.requires_grad for p in encoder.parameters())  # still trained, only without dropout


def test_joint_weight_decay_spares_norms_biases_and_query_tokens_and_lrs_follow_the_schedule(small_tasks, tmp_path):
    adapter, task, joint, _ = _joint_setup(small_tasks, tmp_path)
    encoder = joint.encoder()
    decayed, plain = encoder.param_groups(1e-3, 0.05)
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    linear = {id(m.weight) for m in adapter.parts.qformer.modules() if isinstance(m, torch.nn.Linear)}
    norms = {id(p) for m in adapter.parts.qformer.modules() if isinstance(m, torch.nn.LayerNorm)
             for p in m.parameters()}
    assert linear <= ids(decayed["params"]) and not norms & ids(decayed["params"])
    assert id(adapter.parts.query_tokens) in ids(plain["params"])
    assert ids(decayed["params"]) | ids(plain["params"]) == ids(adapter.resampler_parameters())
    seen = []
    spec = task.probe.model_copy(update={"epochs": 2, "warmup": 0.5})
    fit(joint.inputs, spec, 0, task.headline, Accelerator(cpu=True), encoder=encoder, encoder_lr=2e-3,
        lr=1e-3, on_step=lambda lrs: seen.append(lrs))
    factors = [lrs[0] / 1e-3 for lrs in seen]
    assert all(lrs[-1] == pytest.approx(2e-3 * f) for lrs, f in zip(seen, factors))  # resampler: same schedule
    assert factors[0] < factors[len(factors) // 2 - 1] and factors[-1] < factors[len(factors) // 2]


def test_joint_random_and_random_resampler_start_from_the_models_own_init_drawn_per_seed(small_tasks, tmp_path):
    adapter, task, joint, snapshot = _joint_setup(small_tasks, tmp_path)
    checkpoint, vision = snapshot.digest(), [p.clone() for p in adapter.parts.vision_model.parameters()]
    snapshot.randomise(0)
    first = snapshot.digest()
    linear = next(m for m in adapter.parts.qformer.modules() if isinstance(m, torch.nn.Linear))
    # The Q-Former's own rule: normal weights with its config's initializer_range (0.5 in the tiny build).
    assert linear.weight.std().item() == pytest.approx(adapter.parts.qformer.config.initializer_range, rel=0.2)
    assert torch.all(linear.bias == 0)
    queries = adapter.parts.query_tokens[0]
    assert not torch.allclose(queries[0], queries[1])  # query tokens redrawn, not left identical
    assert all(torch.equal(p, v) for p, v in zip(adapter.parts.vision_model.parameters(), vision))
    snapshot.restore()
    assert snapshot.digest() == checkpoint
    snapshot.randomise(0)
    assert snapshot.digest() == first  # deterministic in the seed
    snapshot.randomise(1)
    assert snapshot.digest() not in (first, checkpoint)
    snapshot.restore()


def test_joint_random_and_every_comparison_with_holm_and_the_selected_lrs_are_reported(both_run):
    """The issue's command, on small tasks with a two-point probe grid: run --regime both."""
    output, run = both_run
    assert run.baselines == ["blind", "oracle", "random_resampler", "vision_patches", "joint_random"]
    family = []
    for task in run.tasks.values():
        assert task.status == "ok", task.error
        assert {"frozen", "joint", "joint_random", "oracle", "blind"} <= set(task.conditions)
        assert set(task.comparisons) == {"joint_vs_frozen", "joint_vs_joint_random", "frozen_vs_blind",
                                         "vision_patches_vs_frozen", "oracle_vs_frozen"}
        for c in task.comparisons.values():
            assert c.ci95[0] <= c.diff <= c.ci95[1] and 0 < c.p_value <= c.p_holm <= 1
            family.append(c.p_value)
        for name, cond in task.conditions.items():
            for seed in cond.seeds:
                assert seed.lr in (3e-4, 1e-3)
                trained = name in ("joint", "joint_random")
                assert [(g.lr, g.resampler_lr) for g in seed.grid] == [(3e-4, 1e-3 if trained else None),
                                                                       (1e-3, 1e-3 if trained else None)]
                assert seed.resampler_lr == (1e-3 if trained else None)
                best = max(seed.grid, key=lambda g: g.validation)
                assert seed.validation == best.validation  # the selected point is the best on validation
        assert task.conditions["joint_random"].resampler_start != task.conditions["joint"].resampler_start
    from spatialbench.stats.bootstrap import holm

    assert [c.p_holm for t in run.tasks.values() for c in t.comparisons.values()] == pytest.approx(holm(family))
    assert "joint - joint_random" in output and "Holm" in output
