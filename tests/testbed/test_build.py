"""The pretrained testbed: its pretraining learns, is deterministic, and its checkpoints load like any other."""

import json

import pytest
import torch

from spatialbench.testbed import pretraining as pt
from spatialbench.testbed import build as testbed
from spatialbench.data.synthetic import Scene, SceneObject, render
from spatialbench.specs import ModelCard
from spatialbench.testing import assert_conformant

# A few steps, so the suite stays quick: each stage's loss falls and its curve and metrics are written. That
# both stages learn their objectives to a margin is a calibration at a larger budget
# (`python benchmarks/calibrate.py testbed`, docs/runs/calibration/testbed.json); the shipped builds' budgets
# and measured curves are in docs/runs/ and docs/methodology.md.
VISION = pt.Budget(train_scenes=128, validation_scenes=32, steps=60, batch_size=32, lr=2e-3)
CAPTION = pt.Budget(train_scenes=128, validation_scenes=32, steps=60, batch_size=32, lr=2e-3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("testbed")
    testbed.pretrain_vision(root / "vision", VISION)
    for objective in pt.OBJECTIVES:
        testbed.pretrain_captioner(root / objective, objective, root / "vision", CAPTION)
    return root


def _metrics(path):
    return json.loads((path / testbed.METRICS).read_text())


def test_the_vision_encoder_learns_what_and_where_under_each_patch(built):
    stage = _metrics(built / "vision")["stages"][0]
    # Untrained: chance over 25 labels (loss ~ln 25 = 3.2) and boxes off by a quarter of the image; a few
    # steps already lower both (the margins at a real budget: the testbed calibration).
    assert stage["after"]["loss"] < 0.8 * stage["before"]["loss"]
    assert stage["after"]["box_l1"] < stage["before"]["box_l1"]
    assert [s for s, _ in stage["train_loss"]][-1] == VISION.steps


@pytest.mark.parametrize("objective", pt.OBJECTIVES)
def test_the_captioner_learns_its_objective(built, objective):
    metrics = _metrics(built / objective)
    vision, caption = metrics["stages"]
    assert vision == _metrics(built / "vision")["stages"][0]  # the shared encoder's curve travels along
    assert caption["after"]["caption_loss"] < 0.8 * caption["before"]["caption_loss"]
    assert [s for s, _ in caption["train_loss"]][-1] == CAPTION.steps
    assert ("box_l1" in caption["after"]) == (objective == "names+boxes")
    if objective == "names+boxes":
        assert caption["after"]["box_l1"] < caption["before"]["box_l1"]


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not(tmp_path):
    budget = pt.Budget(train_scenes=64, validation_scenes=16, steps=5, batch_size=16)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        testbed.pretrain_vision(tmp_path / name, budget, seed=seed)
    digests = {name: _metrics(tmp_path / name)["weights_sha256"] for name in "abc"}
    assert digests["a"] == digests["b"] != digests["c"]


def test_captions_name_objects_in_a_fixed_order_whatever_their_place():
    a = SceneObject("circle", "red", 0, (10, 10, 50, 50))
    b = SceneObject("square", "blue", 9, (120, 100, 170, 150))
    moved = SceneObject("square", "blue", 9, (10, 150, 60, 200))
    assert pt.caption(Scene("s", 224, [a, b])) == pt.caption(Scene("t", 224, [moved, a])) == "red circle blue square"
    cats, boxes, present = pt.object_targets([Scene("s", 224, [b, a]), Scene("t", 224, [moved])])
    assert cats.tolist() == [[9, 0], [9, 0]] and present.tolist() == [[True, True], [True, False]]
    assert boxes[0, 1].mul(224).tolist() == pytest.approx([10, 10, 50, 50])


def test_patch_targets_are_the_painted_object_under_each_patch_centre_and_its_box():
    obj = SceneObject("square", "green", 5, (0, 0, 56, 56))  # covers the top-left 2x2 patches of an 8x8 grid
    scene = Scene("s", 224, [obj])
    labels, boxes = pt.patch_targets(scene, 8)
    assert labels.view(8, 8)[:2, :2].eq(6).all() and labels.sum() == 6 * 4
    assert boxes[0].tolist() == pytest.approx([0, 0, 0.25, 0.25]) and boxes[labels == 0].eq(0).all()
    assert render(scene).getpixel((14, 14)) != render(scene).getpixel((100, 100))


def test_the_box_head_reads_only_through_the_queries():
    head = pt.BoxHead(16, 24)
    tokens = torch.randn(2, 8, 16)
    out = head(tokens, torch.tensor([[0, 3], [5, 5]]))
    assert out.shape == (2, 2, 4) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(head(tokens[:1], torch.tensor([[5]])), head(tokens[:1], torch.tensor([[5]])))
    assert not torch.allclose(head(tokens[:1], torch.tensor([[5]])), head(tokens[1:], torch.tensor([[5]])))


def test_pretraining_scenes_are_no_tasks_scenes():
    from spatialbench.data.synthetic import generate_scenes
    from spatialbench.specs import SyntheticDataset

    ids = {s.id for s in pt.scenes("train", 50)}
    for seed in (0, 1):
        ds = SyntheticDataset(seed=seed, image_size=224, sizes={"train": 50, "validation": 50, "test": 50})
        task = {render(s).tobytes() for split in ("train", "validation", "test") for s in generate_scenes(ds, split)}
        assert not task & {render(s).tobytes() for s in pt.scenes("train", 50)}
    assert len(ids) == 50


def test_a_pretrained_checkpoint_is_a_conformant_blip2(built):
    card = ModelCard(name="testbed", family="blip2", checkpoint=str(built / "names"))
    assert_conformant(card)


def test_the_sincos_table_tells_every_patch_apart():
    table = testbed.sincos(8, 64)
    assert table.shape == (65, 64) and table[0].eq(0).all()
    assert torch.cdist(table[1:], table[1:]).add(torch.eye(64) * 10).min() > 0.1
