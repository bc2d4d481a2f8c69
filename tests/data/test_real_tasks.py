"""The shipped real-data tasks end to end on the real annotation files, with stand-in images where a COCO
root would hold them, and offline: no socket is ever opened."""

import json
import shutil
import socket

import pytest
from PIL import Image

from spatialbench.registry import builtin_dir
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig
from tests.helpers import DATA

REAL_TASKS = ["vsr_random", "vsr_zeroshot", "refcocog_umd", "refcoco_unc", "refcocoplus_unc", "refcoco_unc_testb",
              "coco_region", "coco_relation"]
# Ten train2017 images hold out no validation image at the shipped 5%: the shipped COCO tasks, included
# as they are, with a larger hold-out (the only change).
SMALL_COCO = "include: {path}\nname: {name}_small\ndataset: {{validation_fraction: 0.45, min_area: 0.005}}\n"
VSR_ROWS = {"train": 40, "dev": 12, "test": 16}


def _stand_in(path, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)).save(path)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """{data_dir} with real annotation files (VSR rows, the RefCOCOg fixture, COCO instances cut from it),
    and {coco_root} with a generated image at every path those files name."""
    base = tmp_path_factory.mktemp("real")
    data, coco = base / "data", base / "coco"
    n = 0
    for variant in ("random", "zeroshot"):
        out = data / "vsr" / "splits" / variant
        out.mkdir(parents=True)
        for split, rows in VSR_ROWS.items():
            lines = (DATA / "vsr" / "splits" / variant / f"{split}.jsonl").read_text().splitlines()[:rows]
            (out / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
            for line in lines:
                row = json.loads(line)
                folder = row["image_link"].rstrip("/").split("/")[-2]
                n += 1
                _stand_in(coco / folder / row["image"], (64 + n % 7, 48 + n % 5), n)
    shutil.copytree(DATA / "refcocog_umd_fixture", data / "refcocog")
    instances = json.loads((DATA / "refcocog_umd_fixture" / "instances.json").read_text())
    for image in instances["images"]:
        n += 1
        _stand_in(coco / "train2014" / image["file_name"], (image["width"], image["height"]), n)
    # COCO-derived tasks: the fixture's images split into a train2017 and a val2017 instances file.
    (coco / "annotations").mkdir()
    for split, images in (("train2017", instances["images"][:10]), ("val2017", instances["images"][10:])):
        ids = {i["id"] for i in images}
        part = {**instances, "images": images,
                "annotations": [a for a in instances["annotations"] if a["image_id"] in ids]}
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(part))
        for image in images:
            n += 1
            _stand_in(coco / split / image["file_name"], (image["width"], image["height"]), n)
    tasks = base / "tasks"
    tasks.mkdir()
    for name in ("coco_region", "coco_relation"):
        shipped = builtin_dir("tasks") / f"{name}.yaml"
        (tasks / f"{name}_small.yaml").write_text(SMALL_COCO.format(path=shipped, name=name))
    return data, coco, tasks


@pytest.fixture
def no_network(monkeypatch):
    attempts = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refusing(local):
        def call(self, address):
            if self.family == socket.AF_UNIX:  # local IPC (DataLoader workers passing tensors), not the network
                return local(self, address)
            attempts.append(address)
            raise OSError(f"test forbids network access (tried {address})")
        return call

    monkeypatch.setattr(socket.socket, "connect", refusing(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", refusing(connect_ex))
    return attempts


def test_every_real_task_runs_offline_or_fails_fast_naming_what_is_missing(roots, no_network, tmp_path):
    data, coco, tasks = roots
    config = RunConfig(model="blip2-tiny", tasks=[",".join(REAL_TASKS) + ",coco_region_small,coco_relation_small"],
                       seeds=1, output=tmp_path, device="cpu", data_dir=data, coco_root=coco, include_paths=[tasks],
                       baselines=[], control=False)
    result = Runner(config).run()
    assert no_network == []
    ok = {n for n, t in result.tasks.items() if t.status == "ok"}
    assert ok == {"vsr_random", "vsr_zeroshot", "refcocog_umd", "coco_region_small", "coco_relation_small"}
    assert "no examples" in result.tasks["coco_region"].error  # 10 images, 5% held out: an empty validation split
    vsr = result.tasks["vsr_random"]
    assert vsr.n == {"train": 40, "validation": 12, "test": 16}
    # The random split shares images between train and test: the headline is also split by that.
    assert 0 < vsr.test_images_in_train < 1 and set(vsr.by_group) == {"relation", "meta_category", "image"}
    assert result.tasks["refcocog_umd"].n == {"train": 9, "validation": 10, "test": 9}
    assert result.tasks["refcocog_umd"].headline == "acc_iou50"
    for name in ("refcoco_unc", "refcocoplus_unc", "refcoco_unc_testb"):  # no annotations for these here
        error = result.tasks[name].error
        assert result.tasks[name].status == "failed" and "refs(unc).p" in error, error
    assert result.extraction.failed == 0


def test_missing_images_fail_the_task_before_extraction(roots, tmp_path):
    data, coco, tasks = roots
    partial = tmp_path / "coco"
    shutil.copytree(coco, partial)
    shutil.rmtree(partial / "train2014")
    config = RunConfig(model="blip2-tiny", tasks=["refcocog_umd,coco_region_small"], seeds=1, output=tmp_path / "out",
                       device="cpu", data_dir=data, coco_root=partial, include_paths=[tasks],
                       baselines=[], control=False)
    result = Runner(config).run()
    error = result.tasks["refcocog_umd"].error
    assert "15 of 15" in error and "train2014" in error and "cocodataset.org" in error
    assert result.tasks["coco_region_small"].status == "ok"
    # Only coco_region_small's images were read (its splits are disjoint by image).
    assert result.extraction.images == sum(result.tasks["coco_region_small"].n_images.values())


def test_a_corrupt_image_fails_its_task_with_the_path(roots, tmp_path):
    data, coco, tasks = roots
    broken = tmp_path / "coco"
    shutil.copytree(coco, broken)
    victims = sorted((broken / "val2017").iterdir())
    for victim in victims:  # truncated files: every test image of the task is unreadable
        victim.write_bytes(victim.read_bytes()[:50])
    config = RunConfig(model="blip2-tiny", tasks=["coco_relation_small"], seeds=1, output=tmp_path / "out",
                       device="cpu", data_dir=data, coco_root=broken, include_paths=[tasks],
                       baselines=[], control=False)
    result = Runner(config).run()
    task = result.tasks["coco_relation_small"]
    assert task.status == "failed" and "could not be read" in task.error
    assert any(v.name in task.error for v in victims) and "cannot decode image" in task.error
