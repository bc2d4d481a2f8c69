import json
import random
import shutil
import socket
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from spatialbench.data import coco
from spatialbench.data.sources import DataContext
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import TaskSpec
from tests.helpers import DATA

FIXTURE = DATA / "refcocog_umd_fixture" / "instances.json"
# Out of id order on purpose: the index is the position in the list sorted by id.
CATEGORIES = [{"id": 18, "name": "dog", "supercategory": "animal"},
              {"id": 1, "name": "person", "supercategory": "person"},
              {"id": 44, "name": "bottle", "supercategory": "kitchen"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]
PERSON, CAR, DOG, BOTTLE = 0, 1, 2, 3
NAMES = ["person", "car", "dog", "bottle"]
CAT_ID = {"person": 1, "car": 3, "dog": 18, "bottle": 44}

# (image id, width, height, [(ann id, category, [x, y, w, h], iscrowd)])
TRAIN = [
    (1, 200, 100, [(11, "person", [10, 10, 40, 60], 0),    # kept: centre (30, 40)
                   (12, "dog", [130, 20, 50, 50], 0),      # kept: centre (155, 45), clearly right of the person
                   (13, "car", [100, 80, 10, 10], 0),      # tiny: 100 px < 2% of 20,000
                   (14, "bottle", [60, 60, 30, 30], 0),    # two bottles: "the bottle" names neither
                   (15, "bottle", [90, 10, 30, 30], 0)]),
    (2, 100, 100, [(21, "person", [0, 0, 50, 50], 1),      # a crowd of people makes "the person" ambiguous...
                   (22, "person", [60, 60, 30, 30], 0),    # ...so this one is dropped too
                   (23, "car", [10, 60, 30, 30], 1),       # crowd alone: dropped
                   (24, "dog", [10, 10, 30, 30], 0)]),     # kept, alone: no pair
    (3, 100, 100, [(31, "person", [10, 10, 20, 20], 0),    # centre (20, 20)
                   (32, "dog", [50, 52, 20, 20], 0),       # centre (60, 62): dx 40, dy 42, a near-diagonal tie
                   (33, "car", [10, 70, 20, 20], 0)]),     # centre (20, 80): below the person, left of the dog
    (4, 100, 100, [(41, "person", [0, 0, 10, 20], 0),      # exactly 2% of the image: kept
                   (42, "bottle", [50, 50, 10, 19.9], 0)]),  # just under 2%: dropped
    (5, 200, 100, [(51, "person", [20, 10, 20, 20], 0),    # centre (30, 20)
                   (52, "dog", [70, 55, 20, 20], 0)]),     # centre (80, 65): dx 50, dy 45; under 5% of 200 px apart
]
VAL = [(7, 120, 80, [(71, "car", [10, 10, 30, 30], 0), (72, "dog", [80, 40, 30, 30], 0)])]
TRAIN_OBJECTS = {(1, "person"), (1, "dog"), (2, "dog"), (3, "person"), (3, "dog"), (3, "car"), (4, "person"),
                 (5, "person"), (5, "dog")}
# (image, subject, object) -> relation, in both orders; the loader picks one order per pair.
TRAIN_RELATIONS = {(1, "person", "dog"): "left of", (1, "dog", "person"): "right of",
                   (3, "person", "car"): "above", (3, "car", "person"): "below",
                   (3, "car", "dog"): "left of", (3, "dog", "car"): "right of"}


def file_name(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def instances(images) -> dict:
    return {"info": {}, "licenses": [], "categories": CATEGORIES,
            "images": [{"id": i, "file_name": file_name(i), "width": w, "height": h} for i, w, h, _ in images],
            "annotations": [{"id": a, "image_id": i, "category_id": CAT_ID[c], "bbox": box, "iscrowd": crowd,
                             "area": box[2] * box[3] / 2, "segmentation": []}  # a mask's area, not the box's
                            for i, _, _, anns in images for a, c, box, crowd in anns]}


def write_root(root: Path, train=TRAIN, val=VAL, images: bool = True) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, items in (("train2017", train), ("val2017", val)):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances(items)))
        if images:
            (root / split).mkdir(exist_ok=True)
            for i, w, h, _ in items:
                Image.new("RGB", (w, h), (i * 30 % 256, 80, 200)).save(root / split / file_name(i))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_root(tmp_path_factory.mktemp("coco"))


def task(kind="region_localization", splits=None, **dataset):
    extra = {"splits": splits} if splits else {}
    return TaskSpec(name=f"coco_{kind}", kind=kind, dataset={"source": "coco", **dataset}, **extra)


def load(t, coco_root):
    return coco.load(t, DataContext(coco_root=coco_root))


def everything(data, splits=("train", "validation")):
    return [ex for s in splits for ex in data.splits[s]]


def image_of(ex) -> int:
    return int(ex.image_id.split(".")[0])


# --- region_localization -------------------------------------------------------------------------------


def test_region_objects_exactly(root):
    data = load(task(), root)
    assert data.categories == NAMES and data.classes is None
    got = {(image_of(ex), NAMES[ex.query[0]]) for ex in everything(data)}
    assert got == TRAIN_OBJECTS and len(everything(data)) == len(TRAIN_OBJECTS)
    assert {(image_of(ex), NAMES[ex.query[0]]) for ex in data.splits["test"]} == {(7, "car"), (7, "dog")}


def test_region_targets_are_normalised_boxes(root):
    data = load(task(), root)
    boxes = {(i, c): (box, w, h) for i, w, h, anns in TRAIN + VAL for _, c, box, _ in anns}
    for ex in everything(data, ("train", "validation", "test")):
        box, w, h = boxes[image_of(ex), NAMES[ex.query[0]]]
        assert ex.image_size == (w, h)
        x0, y0, x1, y1 = ex.target
        assert [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h] == pytest.approx(box, abs=1e-9)
        assert ex.groups["category"] == NAMES[ex.query[0]]
    dog = next(ex for ex in everything(data) if ex.uid == "1:12")
    assert dog.target == (130 / 200, 20 / 100, 180 / 200, 70 / 100) and dog.groups["supercategory"] == "animal"


# --- relation --------------------------------------------------------------------------------------------


def test_relation_pairs_exactly(root):
    data = load(task("relation"), root)
    assert data.classes == ["left of", "right of", "above", "below"] and data.categories == NAMES
    got = {(image_of(ex), NAMES[ex.query[0]], NAMES[ex.query[1]]): data.classes[ex.target] for ex in everything(data)}
    assert len(got) == 3  # one order per pair; image 3's person-dog and image 5's pair are ambiguous
    assert {(i, frozenset((s, o))) for i, s, o in got} == {(1, frozenset(("person", "dog"))),
                                                            (3, frozenset(("person", "car"))),
                                                            (3, frozenset(("car", "dog")))}
    for key, label in got.items():
        assert TRAIN_RELATIONS[key] == label
    for ex in everything(data):
        assert ex.groups == {"relation": data.classes[ex.target]}
    (test,) = data.splits["test"]
    assert data.classes[test.target] == {(CAR, DOG): "left of", (DOG, CAR): "right of"}[test.query]


def test_margin_is_in_pixels_of_the_larger_side(root):
    # Image 5 (200 x 100): dx 50, dy 45 px differ by 5 px < 5% of 200. Per-axis fractions (0.25 vs 0.45) would
    # have called it "above"; in the photo it is a diagonal, so it is dropped. At margin 0.022 (4.4 px) it is kept.
    loose = load(task("relation", margin=0.022), root)
    got = {(image_of(ex), NAMES[ex.query[0]], NAMES[ex.query[1]]): loose.classes[ex.target] for ex in everything(loose)}
    assert {k: v for k, v in got.items() if k[0] == 5} in ({(5, "person", "dog"): "left of"},
                                                           {(5, "dog", "person"): "right of"})
    assert not any(k[0] == 3 and {k[1], k[2]} == {"person", "dog"} for k in got)  # 2 px < 2.2% of 100 px
    at_zero = load(task("relation", margin=0.0), root)
    assert any(image_of(ex) == 3 and {NAMES[q] for q in ex.query} == {"person", "dog"} for ex in everything(at_zero))


def test_exact_tie_is_ambiguous_even_at_margin_zero(tmp_path):
    tie = [(1, 100, 100, [(1, "person", [0, 0, 20, 20], 0), (2, "dog", [40, 40, 20, 20], 0)])]
    root = write_root(tmp_path, train=tie)
    data = load(task("relation", margin=0.0), root)
    assert everything(data) == []


def test_max_pairs_per_image_is_deterministic(tmp_path):
    row = [(1, 400, 100, [(10 + k, name, [10 + 100 * k, 30, 30, 30], 0) for k, name in enumerate(NAMES)])]
    a = load(task("relation", max_pairs_per_image=3, validation_fraction=0.01), write_root(tmp_path / "a", train=row))
    shuffled = instances(row)
    random.Random(0).shuffle(shuffled["annotations"])
    b_root = write_root(tmp_path / "b", train=row)
    (b_root / "annotations" / "instances_train2017.json").write_text(json.dumps(shuffled))
    b = load(task("relation", max_pairs_per_image=3, validation_fraction=0.01), b_root)
    assert len(everything(a)) == 3 and everything(a) == everything(b)
    ranked = sorted((coco.unit_hash("coco-pair", 1, p, q), {p, q}) for p in range(10, 14) for q in range(p + 1, 14))
    assert [{int(i) for i in ex.uid.split(":")[1].split("-")} for ex in everything(a)] == [s for _, s in ranked[:3]]
    for ex in everything(a):  # objects in a row: the lower category index is further left
        assert a.classes[ex.target] == ("left of" if ex.query[0] < ex.query[1] else "right of")
    everyone = load(task("relation", max_pairs_per_image=6, validation_fraction=0.01), b_root)
    assert len(everything(everyone)) == 6
    assert {ex.uid for ex in everything(a)} <= {ex.uid for ex in everything(everyone)}


def test_subjects_are_balanced_between_orders():
    lefts = Counter()
    for image in range(200):
        objs = [coco.Annotation(2 * image, image, (100.0, 10.0, 10.0, 10.0), 1, False),
                coco.Annotation(2 * image + 1, image, (5000.0, 10.0, 10.0, 10.0), 3, False)]
        ((s, o, r),) = coco.relation_pairs(coco.ImageInfo(image, "x.jpg", 10_000, 100), objs, 0.05, 6)
        lefts[r] += 1
    assert set(lefts) == {0, 1} and 70 < lefts[0] < 130


# --- splits ----------------------------------------------------------------------------------------------


def test_train_and_validation_are_disjoint_by_image(root):
    data = load(task(validation_fraction=0.4), root)
    train, val = {image_of(e) for e in data.splits["train"]}, {image_of(e) for e in data.splits["validation"]}
    assert train and val and not train & val and train | val == {1, 2, 3, 4, 5}
    assert val == {i for i in range(1, 6) if coco.unit_hash("coco-validation", i) < 0.4}
    again = load(task("relation", validation_fraction=0.4), root)  # the same images held out for every kind
    assert {image_of(e) for e in again.splits["validation"]} <= val
    assert {image_of(e) for e in data.splits["test"]} == {7}


def test_holdout_share_is_close_to_the_fraction():
    held = sum(coco.unit_hash("coco-validation", i) < 0.05 for i in range(20_000))
    assert 0.045 < held / 20_000 < 0.055


def test_default_and_explicit_split_mappings_agree(root):
    default = load(task(), root)
    ours = load(task(splits={"train": "train", "validation": "validation", "test": "test"}), root)
    explicit = load(task(splits={"train": "train2017", "validation": "train2017", "test": "val2017"}), root)
    assert default.splits == ours.splits == explicit.splits
    assert default.fingerprint == explicit.fingerprint and len(default.fingerprint) == 64
    assert load(task(validation_fraction=0.4), root).fingerprint != default.fingerprint


def test_validation_from_its_own_split_keeps_all_train(root):
    data = load(task(splits={"train": "train2017", "validation": "val2017", "test": "test2017"}), write_extra(root))
    assert {image_of(e) for e in data.splits["train"]} == {1, 2, 3, 4, 5}
    assert {image_of(e) for e in data.splits["validation"]} == {7}


def write_extra(root: Path) -> Path:
    extra = [(9, 100, 100, [(91, "dog", [10, 10, 50, 50], 0)])]
    (root / "annotations" / "instances_test2017.json").write_text(json.dumps(instances(extra)))
    (root / "test2017").mkdir(exist_ok=True)
    Image.new("RGB", (100, 100)).save(root / "test2017" / file_name(9))
    return root


def test_test_may_not_share_a_source(root):
    with pytest.raises(SpatialbenchError, match="leak"):
        load(task(splits={"train": "train2017", "validation": "val2017", "test": "val2017"}), root)
    with pytest.raises(SpatialbenchError, match="leak"):
        load(task(splits={"train": "train2017", "validation": "train2017", "test": "train2017"}), root)


# --- images, network, errors -----------------------------------------------------------------------------


def test_images_load_at_annotation_size(root):
    data = load(task(), root)
    for ex in everything(data, ("train", "validation", "test")):
        img = data.images.load(ex.image_id)
        assert img.mode == "RGB" and img.size == ex.image_size
    assert data.images.paths[file_name(7)] == root / "val2017" / file_name(7)
    assert data.images.paths[file_name(1)] == root / "train2017" / file_name(1)


def test_no_network(root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert everything(load(task("relation"), root))


def test_missing_images_fail_before_returning(tmp_path):
    root = write_root(tmp_path)
    (root / "train2017" / file_name(3)).unlink()
    (root / "val2017" / file_name(7)).unlink()
    with pytest.raises(SpatialbenchError) as err:
        load(task(), root)
    text = str(err.value)
    assert "2 of 6" in text and str(root / "train2017" / file_name(3)) in text and "cocodataset.org" in text


def test_missing_instances_names_the_file_and_how_to_get_it(tmp_path):
    root = write_root(tmp_path)
    (root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(SpatialbenchError) as err:
        load(task(), root)
    text = str(err.value)
    assert "instances_val2017.json" in text and "annotations_trainval2017.zip" in text


def test_unset_coco_root_is_reported():
    with pytest.raises(SpatialbenchError, match="coco_root"):
        coco.load(task(), DataContext())


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("images"), "images"),
    (lambda d: d["images"][0].pop("width"), "images[0]"),
    (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotations[1]"),
    (lambda d: d["annotations"][0].update(image_id=999), "annotations[0].image_id"),
    (lambda d: d["annotations"][0].update(category_id=999), "annotations[0].category_id"),
    (lambda d: d["images"][0].update(height=0), "images[0]"),
])
def test_malformed_instances_name_the_field(tmp_path, mutate, field):
    root = write_root(tmp_path)
    raw = instances(TRAIN)
    mutate(raw)
    path = root / "annotations" / "instances_train2017.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SpatialbenchError) as err:
        load(task(), root)
    assert err.value.field == field and err.value.file == str(path)


def test_invalid_json_is_reported(tmp_path):
    root = write_root(tmp_path)
    (root / "annotations" / "instances_train2017.json").write_text("{not json")
    with pytest.raises(SpatialbenchError, match="JSON"):
        load(task(), root)


def test_categories_must_agree_across_splits(tmp_path):
    root = write_root(tmp_path)
    raw = instances(VAL)
    raw["categories"] = raw["categories"][:3] + [{"id": 3, "name": "automobile"}]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(raw))
    with pytest.raises(SpatialbenchError, match="different categories"):
        load(task(), root)


@pytest.mark.parametrize("kind, target", [("vsr", None), ("grounding", None), ("region_localization", "grid"),
                                          ("relation", "box")])
def test_unsupported_kinds_and_targets(root, kind, target):
    extra = {"target": target} if target else {}
    t = TaskSpec(name="x", kind=kind, dataset={"source": "coco"}, **extra)
    with pytest.raises(SpatialbenchError):
        load(t, root)


# --- the real COCO format ----------------------------------------------------------------------------------


def test_real_instances_file(tmp_path):
    raw = json.loads(FIXTURE.read_text())
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2014", "val2014"):  # the same file twice: a smoke test of the format only
        shutil.copy(FIXTURE, root / "annotations" / f"instances_{split}.json")
        (root / split).mkdir()
        for im in raw["images"]:
            Image.new("RGB", (im["width"], im["height"])).save(root / split / im["file_name"])
    splits = {"train": "train2014", "validation": "train2014", "test": "val2014"}

    # An independent count of the objects the derivation keeps.
    sizes = {im["id"]: im["width"] * im["height"] for im in raw["images"]}
    per_image = Counter((a["image_id"], a["category_id"]) for a in raw["annotations"])
    kept = [a for a in raw["annotations"] if per_image[a["image_id"], a["category_id"]] == 1 and not a["iscrowd"]
            and a["bbox"][2] * a["bbox"][3] >= 0.02 * sizes[a["image_id"]]]

    region = load(task(splits=splits), root)
    assert len(region.categories) == 80 and region.categories[:3] == ["person", "bicycle", "car"]
    assert region.categories == [coco.COCO_CATEGORY_NAMES[c["id"]] for c in sorted(raw["categories"],
                                                                                  key=lambda c: c["id"])]
    assert len(everything(region)) == len(kept) == 14
    assert len(region.splits["test"]) == 14
    assert {ex.uid for ex in everything(region)} == {f"{a['image_id']}:{a['id']}" for a in kept}
    relation = load(task("relation", splits=splits), root)
    pairs = everything(relation)
    assert 0 < len(pairs) <= 6 * len({a["image_id"] for a in kept})
    assert Counter(ex.image_id for ex in pairs).most_common(1)[0][1] <= 6
    anns = {a["id"]: a for a in raw["annotations"]}
    for ex in pairs:  # each label re-derived from the raw boxes
        a, b = (anns[int(i)] for i in ex.uid.split(":")[1].split("-"))
        (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
        dx, dy = (bx + bw / 2) - (ax + aw / 2), (by + bh / 2) - (ay + ah / 2)
        assert abs(abs(dx) - abs(dy)) >= 0.05 * max(ex.image_size)
        want = ("left of" if dx > 0 else "right of") if abs(dx) > abs(dy) else ("above" if dy > 0 else "below")
        assert relation.classes[ex.target] == want
        assert ex.query == (region.categories.index(coco.COCO_CATEGORY_NAMES[a["category_id"]]),
                            region.categories.index(coco.COCO_CATEGORY_NAMES[b["category_id"]]))
    for ex in everything(region)[:3]:
        assert region.images.load(ex.image_id).size == ex.image_size
