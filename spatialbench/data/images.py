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
    """Decode one image to 8-bit RGB, whatever its mode (L, RGBA, CMYK, 16-bit, palette).

    The size is checked from the header, before any pixel is decoded: a larger image is refused as a
    decompression bomb whatever PIL's own limit is set to (some libraries switch it off).
    """
    bomb_fix = "a genuine photo this large must be downscaled first; otherwise replace the file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise SpatialbenchError(f"image is {img.width}x{img.height}, over the {MAX_PIXELS:,}-pixel "
                                            "decompression-bomb guard", file=str(path), fix=bomb_fix)
                img.load()
                # No EXIF rotation: COCO boxes are in the stored pixel frame, and so are our targets.
                return _to_rgb(img)
    except SpatialbenchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SpatialbenchError(f"image refused by the decompression-bomb guard: {e}", file=str(path),
                                fix=bomb_fix) from None
    except (OSError, SyntaxError, ValueError) as e:
        why = "the file is empty (0 bytes): an interrupted download or copy?" if _is_empty(path) else e
        raise SpatialbenchError(f"cannot decode image: {why}", file=str(path),
                                fix="re-download or replace the file") from None


def _is_empty(path: Path) -> bool:
    try:
        return Path(path).stat().st_size == 0
    except OSError:
        return False


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit greyscale: 0..65535 maps linearly onto 0..255
        import numpy as np

        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)  # mode I (32-bit) is clipped to 16 bits
        img = Image.fromarray((arr * (255.0 / 65535.0)).round().astype("uint8"), mode="L")
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
            size = 0
            with open(self.paths[image_id], "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
            if size == 0:  # empty files all share one digest: key them by path, so each failure names its own file
                h.update(f"empty file {Path(self.paths[image_id]).resolve()}".encode())
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
