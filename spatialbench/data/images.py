"""Images on disk: decoded safely to RGB, keyed by their file content."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from PIL import Image

from ..errors import SpatialbenchError

MAX_PIXELS = 64_000_000  # far above any dataset image; a larger file is a decompression bomb, not a photo
HOW_TO_GET_COCO = (
    "download the COCO images (https://cocodataset.org/#download: train2014.zip, train2017.zip, val2017.zip) "
    "and unzip them under the COCO root (--coco-root or $COCO_ROOT)"
)


def open_rgb(path: Path) -> Image.Image:
    """Decode one image to 8-bit RGB, whatever its mode (L, RGBA, CMYK, 16-bit, palette)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise SpatialbenchError(f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,}-pixel guard",
                                            file=str(path))
                img.load()
                # No EXIF rotation: COCO boxes are in the stored pixel frame, and so are our targets.
                return _to_rgb(img)
    except SpatialbenchError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SpatialbenchError(f"cannot decode image: {e}", file=str(path),
                                fix="re-download or replace the file") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: scale to 8 bits, do not clip
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() or 1.0
        img = Image.fromarray((arr / top * 255.0).round().astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


class FileImages:
    """An ImageSource over files: image id -> path."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self._keys: dict[str, str] = {}

    def load(self, image_id: str) -> Image.Image:
        return open_rgb(self.paths[image_id])

    def content_key(self, image_id: str) -> str:
        if image_id not in self._keys:
            h = hashlib.sha256()
            with open(self.paths[image_id], "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._keys[image_id] = h.hexdigest()
        return self._keys[image_id]

    def missing(self) -> list[Path]:
        return [p for p in self.paths.values() if not p.is_file()]


def require_files(paths: list[Path], what: str, how: str = HOW_TO_GET_COCO) -> None:
    """Fail before any extraction, naming how many files are missing, the first few, and how to get them."""
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        shown = "\n".join(f"    {p}" for p in missing[:5])
        more = f"\n    ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SpatialbenchError(f"{len(missing)} of {len(paths)} {what} are missing:\n{shown}{more}", fix=how)
