"""Helpers shared by the adapter tests: probe images, a recording safe_open handle, a checkpoint's index."""

import json
import socket
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spatialbench.adapters import loading

TEXTS = ["what is left of the red circle", "where is the blue square in image"]  # same word count


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def shapes_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        box = (x0, y0, x0 + int(rng.integers(w // 8, w // 2)), y0 + int(rng.integers(h // 8, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def mixed_images() -> list[Image.Image]:
    """Noise and drawn shapes at several sizes, so resizing is part of what is compared."""
    return [
        noise_image((80, 80), 0),
        shapes_image((224, 224), 1),
        noise_image((224, 224), 2),
        shapes_image((80, 80), 3),
        shapes_image((150, 97), 4),  # not square, not a multiple of anything
    ]


def square_scenes(n: int = 8, size: int = 224) -> list[Image.Image]:
    """Synthetic-task-like scenes: one coloured square at a different place on a grey background."""
    colours = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 210, 20)]
    side = size // 4
    out = []
    for i in range(n):
        img = Image.new("RGB", (size, size), (128, 128, 128))
        col, row = i % 4, (i // 4) % 2 * 2 + (i % 2)
        x, y = col * side, row * side
        ImageDraw.Draw(img).rectangle((x, y, x + side - 1, y + side - 1), fill=colours[i % len(colours)])
        out.append(img)
    return out




def index_of(checkpoint_dir: Path) -> dict[str, str]:
    return json.loads((checkpoint_dir / loading.INDEX).read_text())["weight_map"]




class RecordingHandle:
    """Wraps a safe_open handle and logs every tensor read through it."""

    def __init__(self, inner, log):
        self._inner, self._log = inner, log

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)

    def get_tensor(self, name):
        self._log["read"].append(name)
        return self._inner.get_tensor(name)

    def get_slice(self, name):
        self._log["read"].append(name)
        return self._inner.get_slice(name)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def isolated_offline_hub(tmp_path, monkeypatch) -> tuple[Path, list]:
    """A fresh, empty HF cache, offline mode on, and any socket connect recorded and refused."""
    import huggingface_hub.constants as hub_constants

    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    attempts = []

    def no_network(self, *args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    return hf_home / "hub", attempts
