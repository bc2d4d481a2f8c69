"""Bad images: every mode ends as correct 8-bit RGB, a decompression bomb is refused from its header, and a
broken file fails its own task, naming the path, while the other tasks of the run finish and keep their work.

(tests/data/test_images.py holds the basic cases: an RGBA/L/CMYK/16-bit smoke test, truncated and empty files
at the open_rgb level, a 1-bit 9000x9000 bomb; these go further: exact pixel values, PIL's guard switched off,
and whole runs.)
"""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from spatialbench.data import coco
from spatialbench.data.images import MAX_PIXELS, FileImages, open_rgb
from spatialbench.errors import SpatialbenchError
from spatialbench.results import read_results
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig


def png(path: Path, width: int, height: int, depth: int, colour_type: int, rows: bytes = b"") -> Path:
    """A PNG written by hand: any header (even one claiming 20000x20000) over whatever pixel bytes we give."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def pixel(path: Path, xy=(0, 0)) -> tuple[int, int, int]:
    img = open_rgb(path)
    assert img.mode == "RGB"
    return img.getpixel(xy)


# --- modes --------------------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 255, 0)])  # opaque red, half red, invisible blue
    img.save(tmp_path / "a.png")
    out = open_rgb(tmp_path / "a.png")
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((1, 0)) == (255, 127, 127)  # 255 * 128/255 + 255 * 127/255 in red; 127 in green, blue
    assert out.getpixel((2, 0)) == (255, 255, 255)  # fully transparent: the white background, not the blue


def test_la_is_composited_on_white(tmp_path):
    img = Image.new("LA", (3, 1))
    img.putdata([(0, 255), (0, 0), (100, 128)])
    img.save(tmp_path / "la.png")
    out = open_rgb(tmp_path / "la.png")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (255, 255, 255), (177, 177, 177)]


def test_palette_with_a_transparent_index_is_composited_on_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 128, 0])  # index 0 red (declared transparent), index 1 green
    img.putdata([0, 1])
    img.save(tmp_path / "p.png", transparency=0)
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = open_rgb(tmp_path / "p.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 128, 0)
    img.save(tmp_path / "opaque.png")  # the same palette without transparency keeps its red
    assert pixel(tmp_path / "opaque.png") == (255, 0, 0)


def test_greyscale_and_one_bit(tmp_path):
    Image.new("L", (2, 2), 77).save(tmp_path / "l.png")
    assert pixel(tmp_path / "l.png") == (77, 77, 77)
    one = Image.new("1", (2, 1))
    one.putdata([0, 255])
    one.save(tmp_path / "one.png")
    out = open_rgb(tmp_path / "one.png")
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("fmt, tolerance", [("tiff", 0), ("jpeg", 3)])
def test_cmyk_primaries_convert_to_rgb(tmp_path, fmt, tolerance):
    colours = {(255, 0, 0, 0): (0, 255, 255),  # pure cyan
               (0, 255, 0, 0): (255, 0, 255),  # magenta
               (0, 0, 255, 0): (255, 255, 0),  # yellow
               (0, 0, 0, 255): (0, 0, 0),  # black ink
               (0, 0, 0, 0): (255, 255, 255)}  # no ink: white paper
    for n, (cmyk, rgb) in enumerate(colours.items()):
        path = tmp_path / f"{n}.{fmt}"
        Image.new("CMYK", (8, 8), cmyk).save(path)
        assert Image.open(path).mode == "CMYK"
        got = pixel(path, (4, 4))
        assert max(abs(g - w) for g, w in zip(got, rgb)) <= tolerance, (cmyk, got)


def test_a_16_bit_ramp_maps_linearly_and_monotonically_onto_0_255(tmp_path):
    ramp = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)  # 1024 levels, 0 .. 65472
    ramp[-1, -1] = 65535
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode == "I;16"
    out = np.asarray(open_rgb(tmp_path / "ramp.png"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    flat = out[..., 0].ravel().astype(int)
    assert flat[0] == 0 and flat[-1] == 255 and (np.diff(flat) >= 0).all()
    assert len(set(flat)) == 256  # every 8-bit level is reached: no clipping, no banding beyond 16 -> 8 bits
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).ravel()
    assert (flat == expected).all()


def test_16_bit_brightness_is_absolute_not_stretched_per_image(tmp_path):
    """A dark 16-bit photo stays dark: one image's brightest pixel must not decide every other pixel's value."""
    dark = np.array([[0, 257], [514, 1000]], dtype=np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    out = np.asarray(open_rgb(tmp_path / "dark.png"))[..., 0]
    assert out.tolist() == [[0, 1], [2, 4]]


def test_big_endian_16_bit_and_32_bit_integer_images(tmp_path):
    big = Image.new("I;16B", (2, 1))
    big.putdata([0, 65535])
    big.save(tmp_path / "b.tif")
    assert Image.open(tmp_path / "b.tif").mode == "I;16B"
    out = open_rgb(tmp_path / "b.tif")
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    wide = Image.fromarray(np.array([[-5, 0, 32896, 10**6]], dtype=np.int32), mode="I")
    wide.save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    row = np.asarray(open_rgb(tmp_path / "i.tif"))[0, :, 0].tolist()
    assert row == [0, 0, 128, 255]  # below 0 clips to black (never wraps round to grey), above 16 bits to white


def test_a_48_bit_rgb_png(tmp_path):
    pixels = struct.pack(">HHH", 65535, 0, 32896) + struct.pack(">HHH", 0, 0, 0)
    png(tmp_path / "deep.png", 2, 1, depth=16, colour_type=2, rows=b"\x00" + pixels)
    out = open_rgb(tmp_path / "deep.png")
    assert out.getpixel((0, 0)) == (255, 0, 128) and out.getpixel((1, 0)) == (0, 0, 0)


# --- decompression bomb -----------------------------------------------------------------------------------------


@pytest.fixture
def no_decoding(monkeypatch):
    """Any attempt to decode pixels fails the test: a bomb must be refused from its header alone."""
    def refuse(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("size, pil_guard", [
    ((20000, 20000), "default"),  # PIL's own limit refuses it at open
    ((20000, 20000), "off"),  # a library switched PIL's limit off: ours still holds
    ((9000, 8000), "default"),  # 72 Mpx: under PIL's error threshold, over ours
])
def test_a_huge_header_is_refused_before_any_pixel_is_decoded(tmp_path, monkeypatch, no_decoding, size, pil_guard):
    if pil_guard == "off":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    bomb = png(tmp_path / "bomb.png", *size, depth=1, colour_type=0, rows=b"\x00" * 64)
    assert bomb.stat().st_size < 200
    with pytest.raises(SpatialbenchError) as e:  # no_decoding: refused from the header alone
        open_rgb(bomb)
    text = str(e.value)
    assert e.value.file == str(bomb) and str(bomb) in text
    assert "decompression-bomb guard" in text
    if pil_guard == "off" or size == (9000, 8000):  # our own guard spoke: it gives the size and the limit
        assert f"{size[0]}x{size[1]}" in text and f"{MAX_PIXELS:,}" in text
    assert e.value.fix and "downscale" in e.value.fix
    assert len(text.splitlines()) <= 3


def test_an_image_just_under_the_guard_is_decoded(tmp_path):
    png(tmp_path / "wide.png", 64, 2, depth=8, colour_type=0, rows=(b"\x00" + bytes(range(64))) * 2)
    assert open_rgb(tmp_path / "wide.png").size == (64, 2)


# --- broken files in a run --------------------------------------------------------------------------------------

W, H = 48, 40
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}]


def _layout(tmp: Path) -> tuple[dict, dict]:
    """COCO instances for train2017 (both train and validation non-empty at validation_fraction 0.45) and val2017."""
    ids = {"train2017": [], "val2017": [101, 102, 103]}
    candidate = 1
    while len(ids["train2017"]) < 8 or not any(coco.unit_hash("coco-validation", i) < 0.45 for i in ids["train2017"]) \
            or all(coco.unit_hash("coco-validation", i) < 0.45 for i in ids["train2017"]):
        ids["train2017"].append(candidate)
        candidate += 1
    files = {}
    for split, image_ids in ids.items():
        raw = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H} for i in image_ids],
               "annotations": [{"id": i * 10 + c, "image_id": i, "category_id": c, "iscrowd": 0,
                                "bbox": [4 + 20 * (c - 1) + i % 3, 6 + i % 5, 16, 20]} for i in image_ids for c in (1, 2)],
               "categories": CATEGORIES}
        files[split] = tmp / "annotations" / f"instances_{split}.json"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        files[split].write_text(json.dumps(raw))
    return ids, files


def _images(root: Path, ids: dict, shade: int) -> None:
    for split, image_ids in ids.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in image_ids:
            img = Image.new("RGB", (W, H), (shade, (i * 37) % 256, (i * 91) % 256))
            img.paste((250, 250, 250), (4 + i % 3, 6 + i % 5, 20, 26))
            img.save(root / split / f"{i:012d}.jpg", quality=95)


TASK = """name: {name}
kind: region_localization
dataset:
  source: coco
  instances: "{base}/annotations/instances_{{split}}.json"
  images: "{base}/{name}/{{split}}"
  validation_fraction: 0.45
  min_area: 0.01
probe: {{architecture: linear, epochs: 2, patience: 1, width: 8, depth: 1}}
"""


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    """One run over four COCO-format tasks: one healthy, one with a truncated JPEG, one with an empty file,
    one with a decompression bomb (a 20000x20000 header); each task has its own image directory."""
    base = tmp_path_factory.mktemp("broken-run")
    ids, _ = _layout(base)
    tasks = base / "tasks"
    tasks.mkdir()
    names = ["img_ok", "img_truncated", "img_empty", "img_bomb"]
    for shade, name in enumerate(names):
        _images(base / name, ids, 40 + 60 * shade)
        (tasks / f"{name}.yaml").write_text(TASK.format(name=name, base=base))
    victims = {"img_truncated": base / "img_truncated" / "val2017" / "000000000102.jpg",
               "img_empty": base / "img_empty" / "train2017" / "000000000003.jpg",
               "img_bomb": base / "img_bomb" / "val2017" / "000000000101.jpg"}
    good = victims["img_truncated"].read_bytes()
    victims["img_truncated"].write_bytes(good[:len(good) // 2])
    victims["img_empty"].write_bytes(b"")
    png(victims["img_bomb"], 20000, 20000, depth=1, colour_type=0, rows=b"\x00" * 64)
    config = RunConfig(model="blip2-tiny", tasks=[",".join(names)], seeds=1, output=base / "out", device="cpu",
                       include_paths=[tasks], cache_dir=base / "cache", baselines=[], control=False)
    runner = Runner(config)
    return base, ids, victims, runner, runner.run()


def test_a_broken_image_fails_only_its_own_task_naming_the_file(broken_run):
    _, _, victims, _, result = broken_run
    assert result.tasks["img_ok"].status == "ok"
    assert result.tasks["img_ok"].metrics["acc_iou50"].per_seed  # trained and scored
    why = {"img_truncated": "cannot decode image", "img_empty": "the file is empty (0 bytes)",
           "img_bomb": "decompression-bomb guard"}
    for name, path in victims.items():
        task = result.tasks[name]
        assert task.status == "failed", name
        assert str(path) in task.error and why[name] in task.error, task.error
        assert "1 image(s) could not be read" in task.error and "replace or remove" in task.error
        assert len(task.error.splitlines()) <= 6  # one screen
        others = [str(p) for n, p in victims.items() if n != name]
        assert not any(o in task.error for o in others)  # each task names its own file, not another task's
    assert result.extraction.failed == 3


def test_nothing_finished_is_lost(broken_run):
    """The results file on disk holds every task; every readable image was extracted once and cached."""
    base, ids, victims, runner, result = broken_run
    assert read_results(runner.results_path) == result
    n_images = sum(len(v) for v in ids.values())
    assert result.extraction.images == 4 * n_images
    assert result.extraction.extracted == 4 * n_images - 3
    # Repair the files and run only the tasks that failed: just the three repaired images are extracted.
    for path in victims.values():
        split, file = path.parent.name, path.name
        Image.open(base / "img_ok" / split / file).convert("RGB").point(lambda v: 255 - v).save(path, quality=95)
    config = runner.config.model_copy(update={"tasks": ["img_truncated,img_empty,img_bomb"],
                                              "output": base / "out2"})
    again = Runner(config).run()
    assert all(t.status == "ok" for t in again.tasks.values()), {n: t.error for n, t in again.tasks.items()}
    assert again.extraction.extracted == 3 and again.extraction.reused == 3 * n_images - 3


def test_empty_files_are_keyed_by_path_so_each_failure_names_its_own(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(tmp_path / "c.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "d.png")
    images = FileImages({k: tmp_path / k for k in ("a.jpg", "b.jpg", "c.png", "d.png")})
    assert images.content_key("a.jpg") != images.content_key("b.jpg")
    assert images.content_key("c.png") == images.content_key("d.png")  # real content is still shared
