"""VSR loader against the real annotation files in tests/fixtures/data/vsr, with stand-in images for the COCO photos.

Exact counts, labels and meta-categories of both variants are checked twice: through read_rows (the loader's row
stage, no images) and through load() over stand-ins for all 6,259 images the variants use (zero-shot's are a subset
of random's). The stand-ins are cheap: each is a hard link to one of four tiny JPEGs, made once per module; their
sizes differ by image, so Example.image_size is checked per image. Error paths (missing images, downloads, bad rows,
the Hub) use a few rows.
"""

from __future__ import annotations

import copy
import functools
import http.server
import io
import json
import os
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from spatialbench.data import vsr
from spatialbench.data.sources import DataContext
from spatialbench.errors import SpatialbenchError
from spatialbench.specs import TaskSpec
from tests.helpers import DATA

VSR = DATA / "vsr"
SPLIT_FILES = {"train": "train", "validation": "dev", "test": "test"}
COUNTS = {"random": {"train": 7680, "validation": 1097, "test": 2195},
          "zeroshot": {"train": 3489, "validation": 340, "test": 1222}}
TRUE_FALSE = {"random": {"train": (3876, 3804), "validation": (564, 533), "test": (1181, 1014)},
              "zeroshot": {"train": (1799, 1690), "validation": (167, 173), "test": (629, 593)}}
SIZES = [(8, 6), (6, 8), (10, 7), (7, 7)]


def stand_in_size(image: str) -> tuple[int, int]:
    return SIZES[int(Path(image).stem) % len(SIZES)]


def jpeg(size: tuple[int, int], colour=(200, 30, 30), exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", **({"exif": exif} if exif else {}))
    return buf.getvalue()


@functools.cache
def raw_rows(variant: str, split: str) -> tuple[dict, ...]:
    """The file's rows, parsed independently of the loader (shared: copy before changing)."""
    return tuple(json.loads(line) for line in (VSR / "splits" / variant / f"{SPLIT_FILES[split]}.jsonl").open())


def task(**dataset) -> TaskSpec:
    return TaskSpec(name="vsr_test", kind="vsr", dataset={"source": "vsr", **dataset})


def annotations_dir(tmp: Path, rows_per_split: dict[str, list[dict]]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    for name, rows in rows_per_split.items():
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp


def few_rows(n: int = 3, variant: str = "zeroshot") -> dict[str, list[dict]]:
    return {SPLIT_FILES[s]: copy.deepcopy(list(raw_rows(variant, s)[:n])) for s in SPLIT_FILES}


def folder(row: dict) -> str:
    return row["image_link"].split("/")[-2]


def refuse_network(*args, **kwargs):
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """Stand-ins for every image of both variants at <root>/<train2017|val2017>/<file>."""
    root = tmp_path_factory.mktemp("coco")
    prototypes = {size: root / f"{w}x{h}.jpg" for size in SIZES for w, h in [size]}
    for size, path in prototypes.items():
        path.write_bytes(jpeg(size))
    for sub in ("train2017", "val2017"):
        (root / sub).mkdir()
    images = {(folder(r), r["image"]) for v in COUNTS for s in SPLIT_FILES for r in raw_rows(v, s)}
    assert len(images) == 6259
    for sub, image in images:
        proto = prototypes[stand_in_size(image)]
        try:
            os.link(proto, root / sub / image)  # a directory entry, not a file write: 30x faster here
        except OSError:
            shutil.copyfile(proto, root / sub / image)
    return root


def test_meta_category_table_matches_the_vsr_file_and_covers_every_relation():
    listed: dict[str, list[str]] = {}
    for line in (VSR / "rel_meta_category_dict.txt").read_text().splitlines():
        if line.strip():
            category, relations = line.split(":", 1)
            for rel in relations.split(","):
                listed.setdefault(rel.strip(), []).append(category.strip())
    occurring = {r["relation"] for v in COUNTS for s in SPLIT_FILES for r in raw_rows(v, s)}
    assert len(occurring) == 66
    assert occurring <= set(vsr.META_CATEGORY)  # explicitly mapped, not through the fallback
    assert set(vsr.META_CATEGORY) == set(listed) | {"congruent"}
    for rel, categories in listed.items():
        assert vsr.META_CATEGORY[rel] == categories[0], rel
    # The quirks: among is listed twice, congruent nowhere, five listed relations never occur.
    assert listed["among"] == ["Topological", "Unallocated"] and vsr.META_CATEGORY["among"] == "Topological"
    assert "congruent" not in listed and vsr.META_CATEGORY["congruent"] == "Unallocated"
    assert set(listed) - occurring == {"after", "deep down", "from", "to", "up"}
    assert set(vsr.META_CATEGORY.values()) == set(vsr.META_CATEGORIES)
    assert vsr.meta_category("left of") == "Projective" and vsr.meta_category("no such relation") == "Unallocated"


@pytest.mark.parametrize("variant", ["random", "zeroshot"])
def test_read_rows_counts_labels_and_categories_without_images(variant):
    rows = vsr.read_rows(task(variant=variant, annotations=str(VSR / "splits" / variant)), DataContext())
    assert {s: len(v) for s, v in rows.items()} == COUNTS[variant]
    for split, items in rows.items():
        raw = raw_rows(variant, split)
        assert [r.label for r in items] == [r["label"] for r in raw]
        assert [r.caption for r in items] == [r["caption"] for r in raw]
        assert [r.folder for r in items] == [folder(r) for r in raw]
        n_true = sum(r.label for r in items)
        assert (n_true, len(items) - n_true) == TRUE_FALSE[variant][split]
        assert {r.meta_category for r in items} == set(vsr.META_CATEGORIES)  # every group present in every split
    first = rows["train"][0]
    if variant == "random":
        assert Counter(r.meta_category for r in rows["test"]) == {
            "Adjacency": 289, "Directional": 88, "Orientation": 137, "Projective": 843, "Proximity": 133,
            "Topological": 629, "Unallocated": 76}
        assert (first.image, first.folder, first.caption, first.label, first.relation, first.meta_category) == (
            "000000296471.jpg", "train2017", "The cat is inside the refrigerator.", 0, "inside", "Topological")
        congruent = [r for r in rows["validation"] if r.relation == "congruent"]
        assert len(congruent) == 1 and congruent[0].meta_category == "Unallocated"
        among = [r for r in rows["train"] if r.relation == "among"]
        assert len(among) == 1 and among[0].meta_category == "Topological"


@pytest.mark.parametrize("variant", ["random", "zeroshot"])
def test_load_over_stand_in_images(variant, coco_root):
    data = vsr.load(task(variant=variant, annotations=str(VSR / "splits" / variant), images="{coco_root}"),
                    DataContext(coco_root=coco_root))
    assert {s: len(v) for s, v in data.splits.items()} == COUNTS[variant]
    assert data.classes == ["false", "true"]
    for split, examples in data.splits.items():
        raw = raw_rows(variant, split)
        assert len({ex.uid for ex in examples}) == len(examples)
        assert [(ex.image_id, ex.query, ex.target) for ex in examples] == [
            (r["image"], r["caption"], r["label"]) for r in raw]
        assert [ex.groups for ex in examples] == [
            {"relation": r["relation"], "meta_category": vsr.META_CATEGORY[r["relation"]]} for r in raw]
        assert all(ex.image_size == stand_in_size(ex.image_id) for ex in examples)
    groups = Counter(ex.groups["meta_category"] for ex in data.splits["train"])
    assert set(groups) == set(vsr.META_CATEGORIES)  # every meta-category has examples to break down by
    ex = data.splits["test"][5]
    assert data.images.paths[ex.image_id] == coco_root / folder(raw_rows(variant, "test")[5]) / ex.image_id
    img = data.images.load(ex.image_id)
    assert img.mode == "RGB" and img.size == ex.image_size
    assert len(data.image_ids()) == {"random": 6259, "zeroshot": 3181}[variant] and len(data.fingerprint) == 64


def test_fingerprint_is_stable_and_follows_the_examples(tmp_path, coco_root):
    rows = few_rows()
    one = vsr.load(task(annotations=str(annotations_dir(tmp_path / "a", rows)), images=str(coco_root)), DataContext())
    same = vsr.load(task(annotations=str(annotations_dir(tmp_path / "a2", rows)), images="{coco_root}"),
                    DataContext(coco_root=coco_root))
    assert same.fingerprint == one.fingerprint
    rows["train"][0]["label"] = 1 - rows["train"][0]["label"]
    two = vsr.load(task(annotations=str(annotations_dir(tmp_path / "b", rows)), images=str(coco_root)), DataContext())
    assert one.fingerprint != two.fingerprint


def test_missing_images_fail_before_returning_with_count_paths_and_how(tmp_path):
    rows = few_rows(4)
    images = tmp_path / "coco"
    keep = rows["train"][0]
    (images / folder(keep)).mkdir(parents=True)
    (images / folder(keep) / keep["image"]).write_bytes(jpeg((8, 8)))
    wanted = {(folder(r), r["image"]) for rs in rows.values() for r in rs}
    with pytest.raises(SpatialbenchError) as err:
        vsr.load(task(annotations=str(annotations_dir(tmp_path / "ann", rows)), images=str(images)), DataContext())
    text = str(err.value)
    assert f"{len(wanted) - 1} of {len(wanted)} VSR images are missing" in text
    second = rows["train"][1]
    assert str(images / folder(second) / second["image"]) in text
    assert "cocodataset.org" in text and "download_images" in text


def test_no_coco_root_names_the_flag(tmp_path):
    with pytest.raises(SpatialbenchError, match="--coco-root"):
        vsr.load(task(annotations=str(annotations_dir(tmp_path, few_rows()))), DataContext())


def test_no_network_when_data_is_local_or_offline(tmp_path, coco_root, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    monkeypatch.setenv("SPATIALBENCH_CACHE", str(tmp_path / "cache"))
    ann = annotations_dir(tmp_path / "ann", few_rows())
    data = vsr.load(task(annotations=str(ann), images=str(coco_root), download_images=True), DataContext())
    assert sum(map(len, data.splits.values())) == 9
    # Offline (conftest sets HF_HUB_OFFLINE=1): missing images are reported, never fetched.
    with pytest.raises(SpatialbenchError, match="HF_HUB_OFFLINE is set, so nothing was downloaded"):
        vsr.load(task(annotations=str(ann), images=str(tmp_path / "empty"), download_images=True), DataContext())
    assert not (tmp_path / "cache").exists()


def test_download_images_fetches_missing_files_once_into_the_cache(tmp_path, monkeypatch):
    rows = few_rows(2)
    served = tmp_path / "served"
    for rs in rows.values():
        for r in rs:
            (served / folder(r)).mkdir(parents=True, exist_ok=True)
            (served / folder(r) / r["image"]).write_bytes(jpeg((9, 5)))
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for rs in rows.values():
            for r in rs:
                r["image_link"] = f"{base}/{folder(r)}/{r['image']}"
        moved = rows["test"][1]
        origin = served / folder(moved) / moved["image"]
        moved["image_link"] = f"{base}/val2017/{moved['image']}"  # 404: not served there
        ann = annotations_dir(tmp_path / "ann", rows)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.setenv("SPATIALBENCH_CACHE", str(tmp_path / "cache"))
        spec = task(annotations=str(ann), images=str(tmp_path / "no-coco"), download_images=True)
        with pytest.raises(SpatialbenchError, match="1 of 6 VSR images are missing") as err:
            vsr.load(spec, DataContext())
        assert "1 downloads failed" in str(err.value) and "404" in str(err.value)
        cached = tmp_path / "cache" / "images" / "coco"
        assert len(list(cached.rglob("*.jpg"))) == 5 and not list(cached.rglob("*.part"))

        (served / "val2017").mkdir(exist_ok=True)
        shutil.copy(origin, served / "val2017" / moved["image"])
        before = len(requests)
        data = vsr.load(spec, DataContext())  # no COCO root at all: the cache alone serves
        assert len(requests) == before + 1  # only the one that failed; the others came from the cache
        assert all(str(p).startswith(str(cached)) for p in data.images.paths.values())
        assert all(ex.image_size == (9, 5) for ex in data.splits["train"])
        # Without download_images nothing is fetched, whatever the network.
        with pytest.raises(SpatialbenchError, match="6 of 6 VSR images are missing"):
            vsr.load(task(annotations=str(ann), images=str(tmp_path / "no-coco")), DataContext())
        assert len(requests) == before + 1
    finally:
        server.shutdown()
        server.server_close()


def test_split_aliases_dev_and_validation(tmp_path):
    rows = few_rows(2)
    as_dev = annotations_dir(tmp_path / "dev", rows)
    as_val = annotations_dir(tmp_path / "val", {("validation" if k == "dev" else k): v for k, v in rows.items()})
    for directory in (as_dev, as_val):
        for splits in ({"train": "train", "validation": "validation", "test": "test"},
                       {"train": "train", "validation": "dev", "test": "test"}):
            spec = TaskSpec(name="v", kind="vsr", dataset={"source": "vsr", "annotations": str(directory)},
                            splits=splits)
            got = vsr.read_rows(spec, DataContext())
            assert [r.caption for r in got["validation"]] == [r["caption"] for r in rows["dev"]]
    (as_dev / "test.jsonl").unlink()
    with pytest.raises(SpatialbenchError, match=r"no file for split 'test'.*found \['dev.jsonl', 'train.jsonl'\]"):
        vsr.read_rows(task(annotations=str(as_dev)), DataContext())


def test_annotations_resolve_data_dir(tmp_path):
    annotations_dir(tmp_path / "vsr" / "zeroshot", few_rows(1))
    rows = vsr.read_rows(task(annotations="{data_dir}/vsr/zeroshot"), DataContext(data_dir=tmp_path))
    assert sum(map(len, rows.values())) == 3
    with pytest.raises(SpatialbenchError, match="annotations directory not found"):
        vsr.read_rows(task(annotations=str(tmp_path / "nowhere")), DataContext())


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(label=2), "label must be 0 or 1"),
    (lambda r: r.update(label=True), "label must be 0 or 1"),
    (lambda r: r.pop("caption"), "row lacks \\['caption'\\]"),
    (lambda r: r.update(image_link="http://images.cocodataset.org/train2014/x.jpg"), "is not an http"),
    (lambda r: r.update(image_link="file:///train2017/" + r["image"]), "is not an http"),
    (lambda r: r.update(image="../" + r["image"]), "must be a plain file name"),
    (lambda r: r.update(image="000000000001.jpg"), "must be a plain file name"),
])
def test_bad_rows_are_reported_with_file_and_row(tmp_path, change, message):
    rows = few_rows(2)
    change(rows["test"][1])
    ann = annotations_dir(tmp_path, rows)
    with pytest.raises(SpatialbenchError, match=message) as err:
        vsr.read_rows(task(annotations=str(ann)), DataContext())
    assert err.value.file == f"{ann / 'test.jsonl'} row 2"


def test_bad_json_line_names_the_line(tmp_path):
    ann = annotations_dir(tmp_path, few_rows(2))
    (ann / "dev.jsonl").write_text((ann / "dev.jsonl").read_text() + "{not json\n")
    with pytest.raises(SpatialbenchError, match="line 3 is not JSON"):
        vsr.read_rows(task(annotations=str(ann)), DataContext())


def test_unreadable_image_is_a_spatialbench_error(tmp_path):
    rows = {k: v[:1] for k, v in few_rows(1).items()}
    images = tmp_path / "coco"
    for rs in rows.values():
        (images / folder(rs[0])).mkdir(parents=True, exist_ok=True)
        (images / folder(rs[0]) / rs[0]["image"]).write_bytes(b"not an image")
    with pytest.raises(SpatialbenchError, match="cannot read the image header"):
        vsr.load(task(annotations=str(annotations_dir(tmp_path / "ann", rows)), images=str(images)), DataContext())


def test_image_size_is_the_stored_frame_whatever_the_exif_rotation(tmp_path):
    rows = {k: v[:1] for k, v in few_rows(1).items()}
    images = tmp_path / "coco"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    for rs in rows.values():
        (images / folder(rs[0])).mkdir(parents=True, exist_ok=True)
        (images / folder(rs[0]) / rs[0]["image"]).write_bytes(jpeg((12, 5), exif=exif))
    data = vsr.load(task(annotations=str(annotations_dir(tmp_path / "ann", rows)), images=str(images)), DataContext())
    ex = data.splits["train"][0]
    assert ex.image_size == (12, 5) == data.images.load(ex.image_id).size


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch):
    """Keep the Arrow files load_dataset writes out of the user's cache (a setting, not a mock)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


def test_hub_path_reads_a_repo_laid_out_like_the_hub(tmp_path, datasets_cache, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    # cambridgeltl/vsr_<variant> holds train.jsonl, dev.jsonl, test.jsonl; datasets names the dev split validation.
    repo = tmp_path / "vsr_zeroshot"
    repo.mkdir()
    for name in ("train", "dev", "test"):
        shutil.copy(VSR / "splits" / "zeroshot" / f"{name}.jsonl", repo / f"{name}.jsonl")
    (repo / "README.md").write_text("---\nlicense: apache-2.0\n---\n# VSR zero-shot\n")
    for splits in (None, {"train": "train", "validation": "dev", "test": "test"}):
        spec = TaskSpec(name="v", kind="vsr", dataset={"source": "vsr", "variant": "zeroshot", "hub_id": str(repo)},
                        **({"splits": splits} if splits else {}))
        rows = vsr.read_rows(spec, DataContext())
        assert {s: len(v) for s, v in rows.items()} == COUNTS["zeroshot"]
        assert [r.label for r in rows["validation"]] == [r["label"] for r in raw_rows("zeroshot", "validation")]
        assert rows["test"][0].uid == "test:0"


def test_hub_offline_without_cache_says_how_to_get_the_data(datasets_cache, monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", refuse_network)
    with pytest.raises(SpatialbenchError) as err:
        vsr.read_rows(task(hub_id="spatialbench-tests/vsr-never-published"), DataContext())
    text = str(err.value)
    assert "spatialbench-tests/vsr-never-published" in text
    assert "load_dataset('spatialbench-tests/vsr-never-published')" in text and "annotations" in text
    # The default id follows the variant.
    with pytest.raises(SpatialbenchError, match="cambridgeltl/vsr_zeroshot"):
        vsr.read_rows(task(variant="zeroshot"), DataContext())


@pytest.mark.parametrize("variant", ["random", "zeroshot"])
def test_test_items_whose_image_is_in_train_are_counted_and_grouped(variant, coco_root):
    from spatialbench.data.examples import SEEN, UNSEEN
    from spatialbench.data.sources import load_task_data

    data = load_task_data(task(variant=variant, annotations=str(VSR / "splits" / variant), images="{coco_root}"),
                          ctx=DataContext(coco_root=coco_root))
    train = {r["image"] for r in raw_rows(variant, "train")}
    seen = sum(r["image"] in train for r in raw_rows(variant, "test"))
    assert data.test_images_in_train() == pytest.approx(seen / COUNTS[variant]["test"])
    groups = Counter(ex.groups.get("image") for ex in data.splits["test"])
    if seen:
        assert groups == {SEEN: seen, UNSEEN: COUNTS[variant]["test"] - seen}
    else:
        assert groups == {None: COUNTS[variant]["test"]}
    assert all("image" not in ex.groups for s in ("train", "validation") for ex in data.splits[s])
    if variant == "random":
        assert 0 < seen < COUNTS["random"]["test"]  # the random split shares images between train and test


def test_a_vsr_run_reports_the_overlap_and_the_headline_on_seen_and_unseen_images(coco_root, tmp_path):
    """Real VSR rows (random split), stand-in images: half the test items share an image with train."""
    import yaml

    from spatialbench.run.runner import Runner
    from spatialbench.specs import RunConfig

    rows = {s: raw_rows("random", s) for s in SPLIT_FILES}
    train_images = {r["image"] for r in rows["train"]}
    seen = [r for r in rows["test"] if r["image"] in train_images][:20]
    unseen = [r for r in rows["test"] if r["image"] not in train_images][:20]
    wanted = {r["image"] for r in seen}
    train = [r for r in rows["train"] if r["image"] in wanted] + list(rows["train"][:20])
    ann = annotations_dir(tmp_path / "vsr", {"train": train, "dev": rows["validation"][:20], "test": seen + unseen})
    spec = {"name": "vsr_overlap", "kind": "vsr", "dataset": {"source": "vsr", "annotations": str(ann),
                                                             "images": "{coco_root}"},
            "probe": {"width": 16, "depth": 1, "epochs": 2, "patience": 1, "lr": 1e-3}}
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "vsr_overlap.yaml").write_text(yaml.safe_dump(spec))
    config = RunConfig(model="blip2-tiny", tasks=["vsr_overlap"], seeds=1, output=tmp_path / "out", device="cpu",
                       include_paths=[tmp_path / "tasks"], baselines=["blind"], coco_root=coco_root)
    result = Runner(config).run().tasks["vsr_overlap"]
    assert result.status == "ok", result.error
    assert result.test_images_in_train == 0.5
    groups = result.conditions["frozen"].by_group["image"]
    assert {k: g.n for k, g in groups.items()} == {"seen in train": 20, "not in train": 20}
    assert result.by_group["image"] == groups
