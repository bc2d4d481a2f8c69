"""Visual Spatial Reasoning (Liu, Emerson & Collier, TACL 2023): captions about COCO 2017 images, true or false.

Two ways in: `dataset.annotations`, a directory of train/dev/test.jsonl (the VSR repository's data/splits/<variant>/,
or a snapshot of the Hub dataset), or else the Hub dataset `hub_id` (default cambridgeltl/vsr_<variant>) through
`datasets.load_dataset`. Split names: the files call the validation split `dev`, the Hub calls it `validation`;
either name finds either one, so the default split mapping works for both.

Images are COCO 2017 files at <images>/<train2017|val2017>/<image>, the folder taken from the row's image_link.
With `download_images: true` (and only then, and never offline) missing ones are fetched from image_link into
$SPATIALBENCH_CACHE/images/coco/ (default ~/.cache/spatialbench/images/coco/).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from ..errors import SpatialbenchError
from ..specs import TaskSpec, VsrDataset
from .examples import Example, TaskData
from .images import FileImages, require_files
from .registry import DataContext, register_source

CLASSES = ["false", "true"]
META_CATEGORIES = ("Adjacency", "Directional", "Orientation", "Projective", "Proximity", "Topological", "Unallocated")

# data/rel_meta_category_dict.txt of github.com/cambridgeltl/visual-spatial-reasoning (commit b27a0af), copied so
# that Hub users need no file. Its quirks, and what we do about them:
# - `among` is listed twice (Topological and Unallocated): the first listing wins, so it is Topological (and it is
#   one: membership in a group of objects, like `between`).
# - `congruent` occurs in the data (one row, random dev) but is in no category: Unallocated, the paper's own bucket
#   for relations it did not assign.
# - after, deep down, from, to, up are listed but never occur: kept, they cost nothing.
# A relation in no listing at all (a future release or a mirror) also counts as Unallocated.
_LISTED: dict[str, tuple[str, ...]] = {
    "Adjacency": ("adjacent to", "alongside", "at the side of", "at the right side of", "at the left side of",
                  "attached to", "at the back of", "ahead of", "against", "at the edge of"),
    "Directional": ("off", "past", "toward", "down", "deep down", "up", "away from", "along", "around", "from",
                    "into", "to", "across", "across from", "through", "down from"),
    "Orientation": ("facing", "facing away from", "parallel to", "perpendicular to"),
    "Projective": ("on top of", "beneath", "beside", "behind", "left of", "right of", "under", "in front of",
                   "below", "above", "over", "in the middle of"),
    "Proximity": ("by", "close to", "near", "far from", "far away from"),
    "Topological": ("connected to", "detached from", "has as a part", "part of", "contains", "within", "at", "on",
                    "in", "with", "surrounding", "among", "consists of", "out of", "between", "inside", "outside",
                    "touching"),
    "Unallocated": ("beyond", "next to", "opposite to", "after", "among", "enclosed by"),
}
META_CATEGORY: dict[str, str] = {}
for _category, _relations in _LISTED.items():
    for _relation in _relations:
        META_CATEGORY.setdefault(_relation, _category)  # first listing wins: among -> Topological
META_CATEGORY["congruent"] = "Unallocated"

FOLDERS = ("train2017", "val2017")
FIELDS = ("image", "image_link", "caption", "label", "relation")  # the vote fields ("[1, 2]" strings) are unused
_SPLIT_ALIASES = {"validation": ("validation", "dev", "val"), "dev": ("dev", "validation", "val"),
                  "val": ("val", "validation", "dev")}
FORMAT_VERSION = 1  # bump when example construction changes, so caches keyed on fingerprints miss
MAX_DOWNLOAD_BYTES = 50 << 20  # a COCO photo is well under 1 MB
HOW_TO_GET_IMAGES = (
    "VSR uses COCO 2017 images: download train2017.zip and val2017.zip (https://cocodataset.org/#download) and "
    "unzip them under the COCO root (--coco-root or $COCO_ROOT; dataset.images must hold train2017/ and val2017/), "
    "or set `download_images: true` in the task's dataset to fetch just the VSR images from their image_link "
    "(needs network; never done under HF_HUB_OFFLINE=1)"
)


def meta_category(relation: str) -> str:
    """The relation's meta-category; unlisted relations are Unallocated."""
    return META_CATEGORY.get(relation, "Unallocated")


@dataclass(frozen=True)
class VsrRow:
    """One parsed annotation row: a caption about an image, and whether it is true."""

    uid: str
    image: str  # COCO 2017 file name, e.g. 000000296471.jpg
    folder: str  # train2017 or val2017
    link: str
    caption: str
    label: int  # 1 true, 0 false
    relation: str

    @property
    def meta_category(self) -> str:
        return meta_category(self.relation)


def _split_candidates(name: str) -> tuple[str, ...]:
    return _SPLIT_ALIASES.get(name, (name,))


def _parse_row(raw: object, where: str, uid: str) -> VsrRow:
    def bad(message: str, field: str | None = None) -> SpatialbenchError:
        return SpatialbenchError(message, file=where, field=field, fix="use the VSR jsonl files unchanged "
                                 "(github.com/cambridgeltl/visual-spatial-reasoning)")

    if not isinstance(raw, dict):
        raise bad(f"a row must be a JSON object, got {type(raw).__name__}")
    missing = [f for f in FIELDS if raw.get(f) is None]
    if missing:
        raise bad(f"row lacks {missing}", missing[0])
    image, link, caption, label, relation = (raw[f] for f in FIELDS)
    wrong = [f for f in ("image", "image_link", "caption", "relation") if not isinstance(raw[f], str)]
    if wrong:
        raise bad("image, image_link, caption and relation must be strings", wrong[0])
    if isinstance(label, bool) or label not in (0, 1):
        raise bad(f"label must be 0 or 1 (false / true), got {label!r}", "label")
    url = urlparse(link)
    parent, _, name = url.path.rpartition("/")
    folder = parent.rpartition("/")[2]
    if url.scheme not in ("http", "https") or folder not in FOLDERS:
        raise bad(f"image_link {link!r} is not an http(s) URL ending in /train2017/<file> or /val2017/<file>",
                  "image_link")
    if not image or image != name or image.startswith(".") or "\\" in image:  # name has no "/": it follows the last one
        raise bad(f"image {image!r} must be a plain file name, the last part of image_link {link!r}", "image")
    return VsrRow(uid, image, folder, link, caption, int(label), relation)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SpatialbenchError(f"cannot read: {e}", file=str(path)) from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SpatialbenchError(f"line {n} is not JSON: {e.msg}", file=str(path),
                                        fix="use the VSR jsonl files unchanged") from None
    return rows


def _local_rows(directory: Path, names: set[str]) -> dict[str, tuple[str, list[dict]]]:
    if not directory.is_dir():
        raise SpatialbenchError("annotations directory not found", file=str(directory), field="dataset.annotations",
                                fix="point it at a directory with train.jsonl, dev.jsonl, test.jsonl (data/splits/"
                                    "<variant>/ of github.com/cambridgeltl/visual-spatial-reasoning)")
    out = {}
    for name in names:
        path = next((p for c in _split_candidates(name) if (p := directory / f"{c}.jsonl").is_file()), None)
        if path is None:
            tried = [f"{c}.jsonl" for c in _split_candidates(name)]
            found = sorted(p.name for p in directory.glob("*.jsonl"))
            raise SpatialbenchError(f"no file for split '{name}' (tried {tried}; found {found})",
                                    file=str(directory), field="splits",
                                    fix="map the task's splits to files that exist")
        out[name] = (str(path), _read_jsonl(path))
    return out


def _hub_rows(hub_id: str, names: set[str]) -> dict[str, tuple[str, list[dict]]]:
    get = ("run once with network: python -c \"import datasets; datasets.load_dataset('{0}')\" (later runs, even "
           "with HF_HUB_OFFLINE=1, use the cache), or `hf download --repo-type dataset {0} --local-dir DIR` and set "
           "`annotations: DIR` in the task's dataset").format(hub_id)
    try:
        import datasets
    except ImportError:
        raise SpatialbenchError(f"loading '{hub_id}' from the Hub needs the `datasets` package", field="dataset.hub_id",
                                fix="pip install datasets, or set `annotations` (a directory of jsonl files)") from None
    try:
        dd = datasets.load_dataset(hub_id)
    except Exception as e:  # offline without a cache, unknown id, bad files: all end as one actionable error
        raise SpatialbenchError(f"cannot load the Hub dataset '{hub_id}': {type(e).__name__}: {e}",
                                field="dataset.hub_id", fix=get) from None
    out = {}
    for name in names:
        key = next((c for c in _split_candidates(name) if c in dd), None)
        if key is None:
            raise SpatialbenchError(f"'{hub_id}' has no split '{name}' (it has {list(dd)})", field="splits",
                                    fix="map the task's splits to the dataset's split names")
        lacking = [f for f in FIELDS if f not in dd[key].column_names]
        if lacking:
            raise SpatialbenchError(f"'{hub_id}' split '{key}' lacks columns {lacking}", field="dataset.hub_id",
                                    fix="use a copy of cambridgeltl/vsr_random or cambridgeltl/vsr_zeroshot")
        out[name] = (f"{hub_id}:{key}", dd[key].select_columns(list(FIELDS)).to_list())
    return out


def read_rows(task: TaskSpec, ctx: DataContext) -> dict[str, list[VsrRow]]:
    """The task's rows per split (train/validation/test), parsed and checked; images are not touched."""
    ds: VsrDataset = task.dataset
    names = set(task.splits.values())
    # A shipped YAML points at {data_dir}; without a data dir the Hub dataset is the source instead.
    if ds.annotations is not None and not ("{data_dir}" in ds.annotations and ctx.data_dir is None):
        raw = _local_rows(ctx.path(ds.annotations, "dataset.annotations"), names)
    else:
        raw = _hub_rows(ds.hub_id or f"cambridgeltl/vsr_{ds.variant}", names)
    out = {}
    for split, name in task.splits.items():
        where, rows = raw[name]
        out[split] = [_parse_row(r, f"{where} row {i + 1}", f"{name}:{i}") for i, r in enumerate(rows)]
    return out


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def image_cache_dir() -> Path:
    """Where download_images puts COCO files: $SPATIALBENCH_CACHE/images/coco (default ~/.cache/spatialbench)."""
    base = os.environ.get("SPATIALBENCH_CACHE") or Path.home() / ".cache" / "spatialbench"
    return Path(base).expanduser() / "images" / "coco"


def _download(url: str, dest: Path) -> None:
    """Fetch url into dest atomically (a temporary file beside it, checked to be an image, then renamed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
            if len(data) > MAX_DOWNLOAD_BYTES:
                raise OSError(f"over {MAX_DOWNLOAD_BYTES >> 20} MB")
            f.write(data)
        with Image.open(tmp) as img:
            img.verify()
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _resolve_images(ds: VsrDataset, ctx: DataContext, rows: dict[str, list[VsrRow]]) -> dict[str, Path]:
    """image -> file; with download_images, missing files are looked for in (or fetched into) the cache."""
    wanted: dict[str, VsrRow] = {}
    for items in rows.values():
        for r in items:
            if wanted.setdefault(r.image, r).folder != r.folder:
                raise SpatialbenchError(f"image {r.image} is linked from both {wanted[r.image].folder} and {r.folder}",
                                        file=r.uid, fix="use the VSR jsonl files unchanged")
    try:
        root: Path | None = ctx.path(ds.images, "dataset.images")
    except SpatialbenchError:
        if not ds.download_images:
            raise
        root = None  # no COCO root: the download cache alone holds the images
    cache = image_cache_dir()
    paths: dict[str, Path] = {}
    fetch: list[tuple[str, Path]] = []
    for image, r in wanted.items():
        local = root / r.folder / image if root is not None else None
        cached = cache / r.folder / image
        if local is not None and local.is_file():
            paths[image] = local
        elif ds.download_images:
            paths[image] = cached
            if not cached.is_file():
                fetch.append((r.link, cached))
        else:
            paths[image] = local
    how = HOW_TO_GET_IMAGES
    if fetch and not _offline():
        def get(job: tuple[str, Path]) -> str | None:
            try:
                _download(*job)
            except Exception as e:  # noqa: BLE001 - every failure is reported by require_files below
                return f"{job[0]}: {type(e).__name__}: {e}"
            return None

        with ThreadPoolExecutor(max_workers=8) as pool:
            failed = [f for f in pool.map(get, fetch) if f]
        if failed:
            how = f"{len(failed)} downloads failed (first: {failed[0]}); {how}"
    elif fetch:
        how = f"HF_HUB_OFFLINE is set, so nothing was downloaded; {how}"
    require_files(list(paths.values()), "VSR images", how)
    return paths


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header alone, in the stored pixel frame that open_rgb returns."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SpatialbenchError(f"cannot read the image header: {e}", file=str(path),
                                fix="re-download or replace the file") from None
    return width, height


def fingerprint(splits: dict[str, list[Example]]) -> str:
    rows = [[split, ex.uid, ex.image_id, ex.query, ex.target, ex.image_size, sorted(ex.groups.items())]
            for split in sorted(splits) for ex in splits[split]]
    return hashlib.sha256(json.dumps(["vsr", FORMAT_VERSION, rows], separators=(",", ":")).encode()).hexdigest()


@register_source("vsr")
def load(task: TaskSpec, ctx: DataContext) -> TaskData:
    """VSR examples: query = caption, target = label (0 false, 1 true), groups = relation and meta_category."""
    rows = read_rows(task, ctx)
    paths = _resolve_images(task.dataset, ctx, rows)  # fails here, before any extraction, if images are missing
    sizes = {image: _image_size(path) for image, path in paths.items()}
    splits = {split: [Example(r.uid, r.image, r.caption, r.label, sizes[r.image],
                              {"relation": r.relation, "meta_category": r.meta_category}) for r in items]
              for split, items in rows.items()}
    return TaskData(splits, FileImages(paths), classes=list(CLASSES), fingerprint=fingerprint(splits))
