import json
import os
import pickle
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

from spatialbench.data import refer
from spatialbench.data.sources import DataContext
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import TaskSpec
from tests.helpers import DATA

FIXTURE = DATA / "refcocog_umd_fixture"
UMD = {"train": "train", "validation": "val", "test": "test"}
INSTANCES = json.loads((FIXTURE / "instances.json").read_text())
IMAGES = {im["id"]: im for im in INSTANCES["images"]}
ANNS = {a["id"]: a for a in INSTANCES["annotations"]}
CATS = {c["id"]: c["name"] for c in INSTANCES["categories"]}


def task(splits=UMD, **dataset):
    spec = {"source": "refer", "dataset": "refcocog", "split_by": "umd", "annotations": str(FIXTURE),
            "images": "{coco_root}/train2014", **dataset}
    return TaskSpec(name="refcocog_umd", kind="grounding", dataset=spec, splits=splits)


def fake_coco(root: Path, skip: int = 0) -> Path:
    """Stand-in images at the sizes instances.json gives, where a COCO root holds them."""
    folder = root / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    for n, im in enumerate(sorted(IMAGES.values(), key=lambda im: im["id"])):
        if n >= skip:
            colour = (im["id"] % 251, 90, 160)
            Image.new("RGB", (im["width"], im["height"]), colour).save(folder / im["file_name"])
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return fake_coco(tmp_path_factory.mktemp("coco"))


def load(t, coco_root):
    return refer.load(t, DataContext(coco_root=coco_root))


def ref_ids(examples):
    return {ex.uid.split(":")[0] for ex in examples}


# --- the real REFER files ----------------------------------------------------------------------------


def test_fixture_counts_refs_and_sentences(coco):
    data = load(task(), coco)
    assert {s: len(ref_ids(items)) for s, items in data.splits.items()} == {"train": 5, "validation": 5, "test": 5}
    assert {s: len(items) for s, items in data.splits.items()} == {"train": 9, "validation": 10, "test": 9}
    all_uids = [ex.uid for items in data.splits.values() for ex in items]
    assert len(set(all_uids)) == 28
    assert data.classes is None and data.categories is None


def test_every_box_is_the_referred_annotation(coco):
    refs = {str(r["ref_id"]): r for r in refer.read_refs(FIXTURE / "refs(umd).p")}
    data = load(task(), coco)
    for split, items in data.splits.items():
        for ex in items:
            ref_id, sent_id = ex.uid.split(":")
            ref = refs[ref_id]
            assert {"train": "train", "validation": "val", "test": "test"}[split] == ref["split"]
            ann = ANNS[ref["ann_id"]]
            image = IMAGES[ann["image_id"]]
            assert ex.image_id == image["file_name"] != ref["file_name"]  # the REFER name has an _<ann_id> suffix
            assert ex.image_size == (image["width"], image["height"])
            w, h = ex.image_size
            x0, y0, x1, y1 = ex.target
            back = [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]
            assert back == pytest.approx(ann["bbox"], abs=1e-6)
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            sentence = next(s for s in ref["sentences"] if str(s["sent_id"]) == sent_id)
            assert ex.query == sentence["sent"]
            assert ex.groups == {"category": CATS[ann["category_id"]]}


def test_a_known_example_by_hand(coco):
    data = load(task(), coco)
    ex = next(e for e in data.splits["train"] if e.uid == "40373:91982")
    assert ex.query == "a woman wearing black dress"
    assert ex.image_id == "COCO_train2014_000000122469.jpg" and ex.image_size == (334, 500)
    x, y, w, h = ANNS[251837]["bbox"]
    assert ex.target == pytest.approx((x / 334, y / 500, (x + w) / 334, (y + h) / 500))


def test_fingerprint_is_stable_and_follows_the_examples(coco):
    a, b = load(task(), coco), load(task(), coco)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    swapped = load(task(splits={"train": "train", "validation": "test", "test": "val"}), coco)
    assert swapped.fingerprint != a.fingerprint


def test_images_load_at_annotation_size(coco):
    data = load(task(), coco)
    for ex in data.splits["test"]:
        img = data.images.load(ex.image_id)
        assert img.mode == "RGB" and img.size == ex.image_size
        assert len(data.images.content_key(ex.image_id)) == 64
    assert set(data.images.paths) == {ex.image_id for items in data.splits.values() for ex in items}


def test_no_network(coco, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert len(load(task(), coco).splits["validation"]) == 10


# --- errors --------------------------------------------------------------------------------------------


def test_missing_images_fail_before_returning(tmp_path):
    root = fake_coco(tmp_path / "coco", skip=7)
    with pytest.raises(SpatialbenchError) as err:
        load(task(), root)
    text = str(err.value)
    assert "7 of 15" in text and "train2014" in text and "cocodataset.org" in text
    first = sorted(IMAGES.values(), key=lambda im: im["id"])[0]["file_name"]
    assert first in text


@pytest.mark.parametrize("name", ["refs(umd).p", "instances.json"])
def test_missing_refer_file_names_it_and_how_to_get_it(tmp_path, coco, name):
    ann = tmp_path / "refcocog"
    shutil.copytree(FIXTURE, ann)
    (ann / name).unlink()
    with pytest.raises(SpatialbenchError) as err:
        refer.load(task(annotations="{data_dir}/{dataset}"), DataContext(data_dir=tmp_path, coco_root=coco))
    text = str(err.value)
    assert str(ann / name) in text and "refcocog.zip" in text and "lichengunc/refer" in text


def test_unset_data_dir_is_reported():
    with pytest.raises(SpatialbenchError, match=r"data_dir"):
        refer.load(task(annotations="{data_dir}/{dataset}"), DataContext())


def test_split_names_must_exist_and_differ(coco):
    with pytest.raises(SpatialbenchError) as err:
        load(task(splits={"train": "train", "validation": "validation", "test": "test"}), coco)
    assert "'validation'" in str(err.value) and "['test', 'train', 'val']" in str(err.value)
    with pytest.raises(SpatialbenchError, match="same source split"):
        load(task(splits={"train": "train", "validation": "val", "test": "val"}), coco)


def test_wrong_kind_is_refused(coco):
    spec = {"source": "refer", "dataset": "refcocog", "split_by": "umd", "annotations": str(FIXTURE)}
    with pytest.raises(SpatialbenchError, match="grounding"):
        refer.load(TaskSpec(name="x", kind="vsr", dataset=spec, splits=UMD), DataContext(coco_root=coco))


def test_refs_pointing_at_unknown_annotations(tmp_path, coco):
    ann = tmp_path / "ann"
    shutil.copytree(FIXTURE, ann)
    inst = dict(INSTANCES, annotations=[a for a in INSTANCES["annotations"] if a["id"] != 251837])
    (ann / "instances.json").write_text(json.dumps(inst))
    with pytest.raises(SpatialbenchError, match="251837"):
        load(task(annotations=str(ann)), coco)


# --- the pickle runs no code ---------------------------------------------------------------------------


class _Payload:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def malicious(marker: Path, protocol: int, how: str) -> bytes:
    payload = {"os.system": _Payload(os.system, f"touch '{marker}'"), "open": _Payload(open, str(marker), "w")}[how]
    ref = {"ref_id": 1, "ann_id": 251837, "split": "train", "sentences": [{"sent": payload, "sent_id": 1}]}
    return pickle.dumps([ref], protocol=protocol)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("how", ["os.system", "open"])
def test_a_pickle_that_names_code_is_refused_unrun(tmp_path, coco, protocol, how):
    # The payload is live: plain pickle would create the control marker.
    control = tmp_path / "control"
    pickle.loads(malicious(control, protocol, how))
    assert control.exists()

    marker = tmp_path / "marker"
    ann = tmp_path / "ann"
    shutil.copytree(FIXTURE, ann)
    (ann / "refs(umd).p").write_bytes(malicious(marker, protocol, how))
    with pytest.raises(SpatialbenchError) as err:
        load(task(annotations=str(ann)), coco)
    text = str(err.value)
    assert str(ann / "refs(umd).p") in text
    expected = {"os.system": f"{os.system.__module__}.system", "open": f"{open.__module__}.open"}[how]
    assert f"'{expected}'" in text and "refused" in text
    assert not marker.exists()


def test_a_harmless_global_is_refused_too(tmp_path):
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "when": Path("x")}]))
    with pytest.raises(SpatialbenchError, match="pathlib"):
        refer.read_refs(path)


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps({"a": 1}), pickle.dumps([{"ref_id": 1}])])
def test_broken_pickles_are_reported(tmp_path, content):
    path = tmp_path / "refs.p"
    path.write_bytes(content)
    with pytest.raises(SpatialbenchError) as err:
        refer.read_refs(path)
    assert str(path) in str(err.value)


def test_the_fixture_pickle_reads_without_globals():
    refs = refer.read_refs(FIXTURE / "refs(umd).p")
    assert len(refs) == 15 and sum(len(r["sentences"]) for r in refs) == 28


# --- a Hub mirror (a local directory laid out like a Hub repo) -----------------------------------------


def mirror_rows(style: str) -> dict[str, list[dict]]:
    """The fixture's refs as mirror rows. jxu124: that mirror's columns (its bbox is x0, y0, x1, y1;
    raw_anns holds COCO's [x, y, w, h]); plain: sentences as strings, bbox [x, y, w, h], no sizes."""
    hub_split = {"train": "train", "val": "validation", "test": "test"}
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for ref in refer.read_refs(FIXTURE / "refs(umd).p"):
        ann = ANNS[ref["ann_id"]]
        image = IMAGES[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        if style == "jxu124":
            row = {"ref_id": ref["ref_id"], "split": ref["split"], "file_name": ref["file_name"],
                   "image_path": f"coco/train2014/{image['file_name']}", "category_id": ann["category_id"],
                   "sentences": [{k: s[k] for k in ("raw", "sent", "sent_id", "tokens")} for s in ref["sentences"]],
                   "raw_anns": json.dumps(ann), "raw_image_info": json.dumps(image),
                   "bbox": [x, y, x + w, y + h], "captions": [s["raw"] for s in ref["sentences"]]}
        else:
            row = {"file_name": ref["file_name"], "bbox": [x, y, w, h], "category_id": ann["category_id"],
                   "sentences": [s["sent"] for s in ref["sentences"]]}
        out[hub_split[ref["split"]]].append(row)
    return out


def write_mirror(root: Path, style: str, fmt: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    for split, rows in mirror_rows(style).items():
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
        else:
            (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_jxu124_style_mirror_gives_the_refer_examples(tmp_path, coco, hub_cache, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: (_ for _ in ()).throw(AssertionError("network")))
    hub = write_mirror(tmp_path / "mirror", "jxu124", "parquet")
    local = load(task(), coco)
    mirrored = load(task(hub_id=str(hub)), coco)
    assert mirrored.splits == local.splits
    assert mirrored.images.paths == local.images.paths


def test_plain_mirror_without_ids_or_sizes(tmp_path, coco, hub_cache):
    hub = write_mirror(tmp_path / "mirror", "plain", "json")
    splits = {"train": "train", "validation": "validation", "test": "test"}  # no split column: the Hub's names
    mirrored = load(task(splits=splits, hub_id=str(hub)), coco)
    local = load(task(), coco)
    for ours in splits:
        got, want = mirrored.splits[ours], local.splits[ours]
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):  # same order: rows follow the refs, sentences in order
            assert (g.image_id, g.image_size, g.query, g.groups) == (w.image_id, w.image_size, w.query, w.groups)
            assert g.target == pytest.approx(w.target, abs=1e-12)
        assert len({g.uid for g in got}) == len(got)


def test_mirror_box_in_another_format_is_refused(tmp_path, coco, hub_cache):
    rows = mirror_rows("jxu124")
    for split in rows.values():
        for row in split:
            del row["raw_anns"]  # now only the x0, y0, x1, y1 column is left, and it is read as x, y, w, h
    (tmp_path / "m").mkdir()
    for split, items in rows.items():
        (tmp_path / "m" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    with pytest.raises(SpatialbenchError, match=r"reaches past"):
        load(task(hub_id=str(tmp_path / "m")), coco)


def test_unreachable_mirror_is_reported(coco, hub_cache):
    with pytest.raises(SpatialbenchError) as err:
        load(task(hub_id="nobody-here/no-such-refcoco"), coco)
    assert err.value.field == "dataset.hub_id" and "nobody-here/no-such-refcoco" in str(err.value)


def test_unreadable_image_header_is_reported(tmp_path, hub_cache):
    root = fake_coco(tmp_path / "coco")
    broken = root / "train2014" / IMAGES[122469]["file_name"]
    broken.write_bytes(b"not an image")
    hub = write_mirror(tmp_path / "mirror", "plain", "json")
    splits = {"train": "train", "validation": "validation", "test": "test"}
    with pytest.raises(SpatialbenchError) as err:
        load(task(splits=splits, hub_id=str(hub)), root)
    assert str(broken) in str(err.value)
