"""Layer-wise probing: every declared layer from one forward per image, probed with CIs, adjacent layers compared."""

import json

import pytest
import torch
from typer.testing import CliRunner

from spatialbench.adapters.families import get_family
from spatialbench.adapters.blip2 import Blip2Adapter
from spatialbench.cli import app
from spatialbench.features import FeatureStore
from spatialbench.registry import ModelRegistry
from spatialbench.testing import probe_images
from tests.helpers.golden import GOLDEN

QFORMER = ["resampler.1", "resampler.2"]  # blip2-tiny's Q-Former has two layers
RUN = ["run", "--model", "blip2-tiny", "--tasks", "golden_relation", "--layers", "all", "--seeds", "2",
       "--baselines", "blind,vision_patches,oracle", "--no-control", "--workers", "0", "--include-path", str(GOLDEN / "tasks")]


def test_run_with_layers_all_reports_every_qformer_layer_and_extracts_each_image_once(tmp_path, monkeypatch):
    seen = []  # images through the vision encoder, counted where the forward runs
    forward = Blip2Adapter.vision_features
    monkeypatch.setattr(Blip2Adapter, "vision_features", lambda self, px: seen.append(len(px)) or forward(self, px))
    out = CliRunner().invoke(app, [*RUN, "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")],
                             terminal_width=100)
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "out" / "blip2-tiny" / "results.json").read_text())
    assert result["layers"] == ["vision.1", "vision.2", *QFORMER]
    ex = result["extraction"]
    assert sum(seen) == ex["images"] == ex["extracted"] > 0 and ex["vision_extracted"] == 0
    assert ex["points"] == ["projected", "vision_patches", *result["layers"]] or \
        ex["points"] == ["resampler", "vision_patches", *result["layers"]]
    task = result["tasks"]["golden_relation"]
    for layer in result["layers"]:
        cond = task["conditions"][layer]
        lo, hi = cond["metrics"]["accuracy"]["ci95"]
        assert cond["role"] == "layer" and lo <= cond["metrics"]["accuracy"]["mean"] <= hi
        assert len(cond["metrics"]["accuracy"]["per_seed"]) == 2
    for before, after in zip(result["layers"], result["layers"][1:]):
        c = task["comparisons"][f"{after}_vs_{before}"]
        assert c["p_holm"] is not None and c["ci95"][0] <= c["diff"] <= c["ci95"][1]
    table = out.output[out.output.index("golden_relation by layer"):]
    for layer in QFORMER:
        mean, (lo, hi) = task["conditions"][layer]["metrics"]["accuracy"]["mean"], task["conditions"][layer]["metrics"]["accuracy"]["ci95"]
        assert f"{layer}" in table and f"[{lo:.3f},{hi:.3f}]" in table and f"{mean:.3f}" in table
    assert "levels: blind" in table
    fitted = sum(max(1, len(s["grid"])) for c in task["conditions"].values() for s in c["seeds"])
    assert f"{fitted} probe fits" in out.output  # the run's plan counts the layers' fits too

    seen.clear()  # a second run reads every point and layer from the cache: no forward at all
    again = CliRunner().invoke(app, [*RUN, "--output", str(tmp_path / "again"), "--cache-dir", str(tmp_path / "c")])
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "again" / "blip2-tiny" / "results.json").read_text())
    assert seen == [] and second["extraction"]["extracted"] == 0
    again = second["tasks"]["golden_relation"]["conditions"]["resampler.2"]
    assert again["metrics"] == task["conditions"]["resampler.2"]["metrics"]  # same cached rows, same probes

    # another task added to the same output without --layers keeps the earlier task's layers, and the file validates
    more = CliRunner().invoke(app, [*RUN[:4], "golden_grid", *RUN[7:], "--output", str(tmp_path / "out"),
                                    "--cache-dir", str(tmp_path / "c")])
    assert more.exit_code == 0, more.output
    merged = json.loads((tmp_path / "out" / "blip2-tiny" / "results.json").read_text())
    assert set(merged["tasks"]) == {"golden_relation", "golden_grid"} and merged["layers"] == result["layers"]
    checked = CliRunner().invoke(app, ["leaderboard", "validate", str(tmp_path / "out" / "blip2-tiny" / "results.json"),
                                       "--include-path", str(GOLDEN / "tasks")])
    assert checked.exit_code == 0, checked.output


def test_an_unknown_layer_is_refused_before_any_work_naming_the_declared_ones(tmp_path):
    out = CliRunner().invoke(app, [*RUN[:5], *RUN[-2:], "--layers", "resampler.9", "--output", str(tmp_path / "o")])
    assert out.exit_code != 0
    assert "--layers" in out.output and "resampler.9" in out.output and "resampler.2" in out.output
    assert not (tmp_path / "o" / "blip2-tiny" / "results.json").exists()


@pytest.fixture(scope="module")
def blip2():
    card = ModelRegistry().get("blip2-tiny")
    return get_family(card.family).load(card)


def test_one_forward_fills_every_store_and_writes_only_where_an_image_is_missing(tmp_path, blip2):
    images = probe_images(6, size=64)
    requests = [(f"img{i}", None, lambda im=im: im) for i, im in enumerate(images)]
    points = ["resampler", *blip2.layers]
    stores = lambda: [FeatureStore(blip2, tmp_path, batch_size=4, point=p) for p in points]  # noqa: E731
    head, *rest = stores()
    head.ensure(requests[:3], also=rest)
    head.ensure(requests, also=rest)  # three more images: one forward each
    assert head.extracted == 6 and head.reused == 3
    shards = lambda store: sorted(store.shards.glob("*.safetensors"))  # noqa: E731
    lost = rest[points.index("resampler.1") - 1]
    for path in shards(lost):
        path.unlink()  # one layer's cache gone: its images are extracted again, the others' rows not rewritten
    kept = {s.point: shards(s) for s in rest if s is not lost}
    head, *rest = stores()
    head.ensure(requests, also=rest)
    assert head.extracted == 6 and all(shards(s) == kept[s.point] for s in rest if s.point in kept)
    head, *rest = stores()
    head.ensure(requests, also=rest)
    assert head.extracted == 0 and head.reused == 6
    want = blip2.prompts_at(blip2.preprocess(images), points)
    for store in (head, *rest):
        assert torch.equal(store.load([(f"img{i}", None) for i in range(6)]), want[store.point]), store.point


def test_layers_before_the_resampler_are_keyed_by_image_alone_where_the_resampler_reads_text(tmp_path):
    card = ModelRegistry().get("instructblip-tiny")
    adapter = get_family(card.family).load(card, point="resampler")
    images = probe_images(2, size=64)
    requests = [(f"img{i}", text, lambda im=im: im) for i, im in enumerate(images) for text in ("left of", "above")]
    prompt = FeatureStore(adapter, tmp_path, point="resampler")
    layers = [FeatureStore(adapter, tmp_path, point=p) for p in ("vision.1", "resampler.1")]
    prompt.ensure(requests, also=layers)
    assert prompt.extracted == 4
    vision, qformer = layers
    one = vision.load([("img0", "left of")])
    assert torch.equal(one, vision.load([("img0", "above")]))  # the same entry, whatever the text
    assert not torch.equal(qformer.load([("img0", "left of")]), qformer.load([("img0", "above")]))
    assert len(vision._checked) == 2 and len(qformer._checked) == 4
