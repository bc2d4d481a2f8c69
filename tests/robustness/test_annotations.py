"""Bad boxes in COCO and REFER annotations.

The choice (documented in spatialbench/data/coco.py and refer.py): a box no correct file holds (not finite,
negative width or height, reaching more than 2% past its image) is an error naming the annotation id (or the
mirror row), the file and the field; a zero-size box, which real COCO-format exports do contain, can never
be a probe target and is skipped, with a warning that counts them. Nothing is dropped silently.
"""

import json
import logging
import shutil
from pathlib import Path

import pytest
from PIL import Image

from spatialbench.data import coco, refer
from spatialbench.data.sources import DataContext
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import TaskSpec
from tests.helpers import DATA
from tests.helpers.coco import coco_root

REFER_FIXTURE = DATA / "refcocog_umd_fixture"
def coco_task(**dataset) -> TaskSpec:
    return TaskSpec(name="coco_boxes", kind="region_localization",
                    dataset={"source": "coco", "validation_fraction": 0.45, **dataset})


@pytest.mark.parametrize("box, words", [
    ([50, 10, -30, 40], "negative width or height"),
    ([50, 10, 30, -1], "negative width or height"),
    ([50, 10, float("nan"), 40], "not finite"),
    ([50, 10, float("inf"), 40], "not finite"),
    ([90, 10, 30, 40], "reaches past the 100x80 image 000000000001.jpg"),  # x + w = 120 > 102
    ([-10, 10, 30, 40], "reaches past"),
    ([150, 100, 10, 10], "reaches past"),  # wholly outside
])
def test_coco_box_that_no_correct_file_holds_names_annotation_file_and_field(tmp_path, box, words):
    root, train = coco_root(tmp_path, [box])
    with pytest.raises(SpatialbenchError) as e:
        coco.load(coco_task(), DataContext(coco_root=root))
    err = e.value
    assert err.file == str(train) and err.field == "annotations[1].bbox"  # the dog of image 1 (id 12)
    assert "annotation 12" in err.message and words in err.message
    assert "[x, y, w, h]" in err.fix
    assert len(str(err).splitlines()) <= 3


def test_coco_box_within_the_edge_slack_is_kept_unclipped(tmp_path):
    root, _ = coco_root(tmp_path, [[71, 10, 30, 40]])  # x + w = 101 on a 100 px image: rounding, not an error
    data = coco.load(coco_task(), DataContext(coco_root=root))
    dog = next(ex for s in data.splits.values() for ex in s if ex.uid == "1:12")
    assert dog.target[2] == pytest.approx(1.01)


@pytest.mark.parametrize("box", [[50, 10, 0, 40], [50, 10, 30, 0], [50, 10, 0, 0]])
def test_coco_zero_size_box_is_skipped_and_counted(tmp_path, caplog, box):
    root, train = coco_root(tmp_path, [[50, 10, 30, 40], box, box])  # image 2 gets two zero-size cars
    with caplog.at_level(logging.WARNING, logger="spatialbench.data.coco"):
        data = coco.load(coco_task(), DataContext(coco_root=root))
    uids = {ex.uid for s in data.splits.values() for ex in s}
    assert "2:23" not in uids and "2:21" in uids  # the car is no probe object; the rest of the image still is
    warnings = [r.getMessage() for r in caplog.records if "zero-size" in r.getMessage()]
    assert len(warnings) == 1 and "coco_boxes: 2 annotation(s)" in warnings[0] and str(train) in warnings[0]
    assert "23" in warnings[0]  # the ids, so they can be looked up


# --- REFER --------------------------------------------------------------------------------------------------


def refer_setup(tmp: Path, change_box) -> tuple[Path, Path, int]:
    """A copy of the real RefCOCOg fixture with one referred annotation's box changed, and images for it."""
    ann_dir = tmp / "refcocog"
    shutil.copytree(REFER_FIXTURE, ann_dir)
    raw = json.loads((ann_dir / "instances.json").read_text())
    refs = refer.read_refs(ann_dir / "refs(umd).p")
    target = refs[0]["ann_id"]
    index = next(i for i, a in enumerate(raw["annotations"]) if a["id"] == target)
    raw["annotations"][index]["bbox"] = change_box(raw["annotations"][index]["bbox"])
    (ann_dir / "instances.json").write_text(json.dumps(raw))
    images = tmp / "coco" / "train2014"
    images.mkdir(parents=True)
    for im in raw["images"]:
        Image.new("RGB", (im["width"], im["height"]), (im["id"] % 251, 90, 160)).save(images / im["file_name"])
    return ann_dir, tmp / "coco", index


def refer_task(annotations: Path, **dataset) -> TaskSpec:
    return TaskSpec(name="refcocog_boxes", kind="grounding", splits={"train": "train", "validation": "val",
                                                                     "test": "test"},
                    dataset={"source": "refer", "dataset": "refcocog", "split_by": "umd",
                             "annotations": str(annotations), "images": "{coco_root}/train2014", **dataset})


@pytest.mark.parametrize("change, words", [
    (lambda b: [b[0], b[1], -b[2], b[3]], "negative width or height"),
    (lambda b: [b[0], b[1], b[2] * 50, b[3]], "reaches past"),
    (lambda b: [b[0], b[1], b[2], float("inf")], "not finite"),
])
def test_refer_bad_box_names_the_annotation_and_instances_file(tmp_path, change, words):
    ann_dir, root, index = refer_setup(tmp_path, change)
    with pytest.raises(SpatialbenchError) as e:
        refer.load(refer_task(ann_dir), DataContext(coco_root=root))
    assert e.value.file == str(ann_dir / "instances.json") and e.value.field == f"annotations[{index}].bbox"
    assert words in e.value.message and "annotation " in e.value.message


def test_refer_zero_area_box_is_skipped_and_counted(tmp_path, caplog):
    ann_dir, root, _ = refer_setup(tmp_path, lambda b: [b[0], b[1], 0, b[3]])
    with caplog.at_level(logging.WARNING, logger="spatialbench.data.refer"):
        data = refer.load(refer_task(ann_dir), DataContext(coco_root=root))
    first = str(refer.read_refs(ann_dir / "refs(umd).p")[0]["ref_id"])
    assert not any(ex.uid.split(":")[0] == first for s in data.splits.values() for ex in s)
    assert sum(len(s) for s in data.splits.values()) > 0
    assert any("dropped 1 refs whose box has no area" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bbox, words", [([10, 10, -5, 20], "width and height"), ([10, 10, "nan", 20], "finite")])
def test_refer_mirror_row_with_a_bad_box_names_the_row_and_column(tmp_path, monkeypatch, bbox, words):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    row = {"file_name": "COCO_train2014_000000000001_5.jpg", "category_id": 1, "sentences": ["the man"]}
    for split in ("train", "validation", "test"):
        rows = [{**row, "bbox": [10, 10, 20, 20]}, {**row, "bbox": [float(v) for v in bbox]}]
        (mirror / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SpatialbenchError) as e:
        refer.load(refer_task(tmp_path, hub_id=str(mirror)), DataContext(coco_root=tmp_path))
    assert e.value.file == str(mirror) and e.value.field in ("train", "validation", "test")
    assert "row 1" in e.value.message and "bbox" in e.value.message and words in e.value.message
