"""Images from disk: every mode ends as 8-bit RGB; broken files fail with their path, never a traceback."""

import numpy as np
import pytest
from PIL import Image

from spatialbench.data.images import FileImages, open_rgb, require_files
from spatialbench.errors import SpatialbenchError


def test_modes_convert_to_rgb_correctly(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red: white after compositing
    rgba.save(tmp_path / "a.png")
    assert open_rgb(tmp_path / "a.png").getpixel((0, 0)) == (255, 255, 255)
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    assert open_rgb(tmp_path / "l.png").getpixel((1, 1)) == (77, 77, 77)
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = open_rgb(tmp_path / "c.jpg").getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 1, 1, 0) is red
    deep = Image.fromarray(np.array([[0, 65535], [32768, 65535]], dtype=np.uint16))
    deep.save(tmp_path / "d.png")
    img = open_rgb(tmp_path / "d.png")
    assert img.mode == "RGB" and img.getpixel((1, 0)) == (255, 255, 255) and img.getpixel((0, 1))[0] == 128


def test_broken_files_name_their_path(tmp_path):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:100])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("truncated.jpg", "empty.jpg"):
        with pytest.raises(SpatialbenchError) as e:
            open_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "cannot decode" in str(e.value)


def test_decompression_bomb_is_refused(tmp_path):
    Image.new("1", (9000, 9000)).save(tmp_path / "bomb.png")  # 81 Mpx of one bit: tiny on disk
    with pytest.raises(SpatialbenchError) as e:
        open_rgb(tmp_path / "bomb.png")
    assert "bomb.png" in str(e.value)


def test_missing_files_are_counted_and_listed(tmp_path):
    paths = [tmp_path / f"{i}.jpg" for i in range(8)]
    paths[0].write_bytes(b"x")
    with pytest.raises(SpatialbenchError) as e:
        require_files(paths, "COCO images")
    text = str(e.value)
    assert "7 of 8 COCO images are missing" in text and str(paths[1]) in text and "and 2 more" in text
    assert "cocodataset.org" in text


def test_content_key_follows_the_bytes(tmp_path):
    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), "red").save(tmp_path / "b.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "c.png")
    images = FileImages({k: tmp_path / f"{k}.png" for k in "abc"})
    assert images.content_key("a") == images.content_key("b") != images.content_key("c")
