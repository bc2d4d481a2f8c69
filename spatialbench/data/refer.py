"""RefCOCO / RefCOCO+ / RefCOCOg as a grounding task: from the REFER files, or from a Hub mirror.

REFER layout: ``<annotations>/refs(<split_by>).p`` (a pickle: a list of refs with ref_id, ann_id,
split, sentences[{sent, sent_id, ...}]) beside ``instances.json`` (COCO-style images and annotations).
The pickle is read by an unpickler that refuses every global, so a file that asks to import anything
is rejected before any of it runs.

One example per sentence: uid "<ref_id>:<sent_id>", query = the sentence's ``sent`` text, target =
the referred annotation's box normalised by the image size, (x/W, y/H, (x+w)/W, (y+h)/H), not clipped,
so target x image_size gives back the COCO box (a box reaching more than 2% past the image edge is
refused: it means mismatched files or a box in another format; so is a box that is not finite or has a
negative width or height; a ref whose box has zero area is skipped, and a warning counts them).
groups = {"category": its COCO name}.
image_id is the COCO file name from instances.json (the ``file_name`` of a ref carries an extra
_<ann_id> suffix and names no real file). Splits come from each ref's ``split`` field (unc:
train/val/testA/testB; umd: train/val/test; google: train/val, and test for RefCOCO), selected by the
task's ``splits`` mapping (ours -> theirs; each of ours needs a source split of its own).

A Hub mirror (``hub_id``, e.g. jxu124/refcocog) gives one row per ref. Fields read: the split (the
row's ``split``, else the Hub split name), the image file (``raw_image_info.file_name``, else the base
name of ``image_path``, else ``file_name`` without the REFER suffix), the box (``raw_anns.bbox``, the
original COCO [x, y, w, h]; else ``bbox``, read as [x, y, w, h] too: note that jxu124's ``bbox`` column
is [x0, y0, x1, y1], which is why ``raw_anns`` comes first), the sentences (``sentences`` as
strings or dicts with sent / raw, else ``captions``), the size (``width``/``height``, else those of
``raw_image_info``, else read from the image header), the category (``category`` name, else COCO's
name for ``category_id``).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import SpatialbenchError
from ..specs import SPLITS, ReferDataset, TaskSpec
from .coco import COCO_CATEGORY_NAMES, annotated_objects, fingerprint, normalised, read_instances
from .examples import Example, TaskData
from .images import FileImages, require_files
from .registry import DataContext, register_source

log = logging.getLogger(__name__)

LOADER_VERSION = 1  # bump when example construction changes, so caches keyed on fingerprints miss
HOW_TO_GET_REFER = (
    "download {dataset}.zip of the REFER data (github.com/lichengunc/refer, "
    "https://bvisionweb1.cs.unc.edu/licheng/referit/data/{dataset}.zip) and unzip it so that '{where}' holds "
    "refs({split_by}).p and instances.json (--data-dir or $SPATIALBENCH_DATA sets {{data_dir}}); "
    "or set dataset.hub_id to a Hub mirror"
)
_REFER_SUFFIX = re.compile(r"^(?P<stem>.+_\d{12})_\d+(?P<ext>\.[A-Za-z]+)$")  # COCO_train2014_<id>_<ann_id>.jpg


# --- a pickle reader that runs no code --------------------------------------------------------------


class _GlobalRefused(pickle.UnpicklingError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _NoGlobals(pickle.Unpickler):
    """Builds only lists, dicts, strings and numbers: any class or function reference is refused."""

    def find_class(self, module: str, name: str):  # every global, callable or not, goes through here
        raise _GlobalRefused(f"{module}.{name}")


def read_refs(path: Path) -> list[dict[str, Any]]:
    """The refs of a REFER pickle, read without importing or calling anything."""
    try:
        with open(path, "rb") as f:
            refs = _NoGlobals(f, encoding="utf-8", errors="replace").load()
    except _GlobalRefused as e:
        raise SpatialbenchError(f"refused to unpickle: the file asks for the global '{e.name}' (REFER refs need "
                                "none, and a pickle that names code can run it)", file=str(path),
                                fix="re-download the REFER data from its source; do not open this file with "
                                "pickle.load") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign pickle fails in many ways
        raise SpatialbenchError(f"not a readable REFER pickle ({type(e).__name__}: {e})", file=str(path),
                                fix="re-download the REFER data") from None
    if not isinstance(refs, list):
        raise SpatialbenchError(f"expected a list of refs, got {type(refs).__name__}", file=str(path))
    for i, ref in enumerate(refs):
        missing = [k for k in ("ref_id", "ann_id", "split", "sentences") if not isinstance(ref, dict) or k not in ref]
        if missing or not isinstance(ref["sentences"], list):
            raise SpatialbenchError(f"ref {i} lacks {missing or ['a list of sentences']}", file=str(path))
    return refs


# --- one shape for both sources -----------------------------------------------------------------------


@dataclass
class Ref:
    split: str
    ref_id: str
    file_name: str  # the COCO image file
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels
    size: tuple[int, int] | None  # (W, H); None: read from the image header
    category: str
    sentences: list[tuple[str, str]]  # (sent_id, text)
    where: str  # for error messages


def _local_refs(ds: ReferDataset, ctx: DataContext) -> list[Ref]:
    where = ctx.path(ds.annotations, "dataset.annotations", dataset=ds.dataset, split_by=ds.split_by)
    how = HOW_TO_GET_REFER.format(dataset=ds.dataset, where=where, split_by=ds.split_by)
    refs_file, inst_file = where / f"refs({ds.split_by}).p", where / "instances.json"
    for file in (refs_file, inst_file):
        if not file.is_file():
            raise SpatialbenchError(f"REFER file not found: {file.name}", file=str(file), fix=how)
    inst = read_instances(inst_file)
    anns = {a.id: a for a in inst.annotations}
    names = inst.category_names()
    out = []
    for ref in read_refs(refs_file):
        ann = anns.get(ref["ann_id"])
        if ann is None:
            raise SpatialbenchError(f"ref {ref['ref_id']} points at annotation {ref['ann_id']}, which "
                                    f"{inst_file.name} lacks", file=str(refs_file),
                                    fix="use the instances.json shipped with this refs file")
        info = inst.images[ann.image_id]
        sentences = [(str(s.get("sent_id", j)), s.get("sent") or s.get("raw") or "")
                     for j, s in enumerate(ref["sentences"]) if isinstance(s, dict)]
        out.append(Ref(str(ref["split"]), str(ref["ref_id"]), info.file_name, ann.bbox, (info.width, info.height),
                       names[ann.category_id], sentences, f"{inst_file}: annotation {ann.id}"))
    return out


def _as_dict(value: Any) -> dict:
    """A JSON (or Python-literal) object held in a string column; never evaluates code."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return {}
    return value if isinstance(value, dict) else {}


def _hub_ref(row: dict[str, Any], hub_split: str, i: int, hub_id: str) -> Ref:
    info, ann = _as_dict(row.get("raw_image_info")), _as_dict(row.get("raw_anns"))
    name = info.get("file_name") or (Path(row["image_path"]).name if row.get("image_path") else None)
    if not name and row.get("file_name"):
        m = _REFER_SUFFIX.match(row["file_name"])
        name = m["stem"] + m["ext"] if m else row["file_name"]
    bbox, column = (ann["bbox"], "raw_anns.bbox") if ann.get("bbox") else (row.get("bbox"), "bbox")
    if not name or not bbox or len(bbox) != 4:
        raise ValueError("needs an image file name (raw_image_info, image_path or file_name) and a bbox [x, y, w, h]")
    box = tuple(float(v) for v in bbox)
    if not all(math.isfinite(v) for v in box) or box[2] < 0 or box[3] < 0:
        raise ValueError(f"{column} {list(bbox)} must be finite, with a width and height of at least 0")
    width, height = row.get("width") or info.get("width"), row.get("height") or info.get("height")
    texts = row.get("sentences") or row.get("captions") or []
    sentences = []
    for j, s in enumerate(texts):
        if isinstance(s, dict):
            sent_id = s.get("sent_id")
            sentences.append((str(j if sent_id is None else sent_id), s.get("sent") or s.get("raw") or ""))
        else:
            sentences.append((str(j), str(s)))
    category = row.get("category") if isinstance(row.get("category"), str) else None
    category = category or COCO_CATEGORY_NAMES.get(row.get("category_id") or ann.get("category_id"), "unknown")
    ref_id = row.get("ref_id")
    return Ref(str(row.get("split") or hub_split), str(ref_id) if ref_id is not None else f"{hub_split}-{i}",
               str(name), box, (int(width), int(height)) if width and height else None,
               category, sentences, f"{hub_id} [{hub_split}] row {i}: {column}")


HUB_COLUMNS = ("split", "ref_id", "raw_image_info", "raw_anns", "image_path", "file_name", "bbox", "width",
               "height", "sentences", "captions", "category", "category_id")


def _hub_refs(ds: ReferDataset) -> list[Ref]:
    try:
        import datasets

        loaded = datasets.load_dataset(ds.hub_id)
    except Exception as e:  # noqa: BLE001 - offline, missing, or malformed: all end the same way
        raise SpatialbenchError(f"cannot load the Hub dataset '{ds.hub_id}' ({type(e).__name__}: {e})",
                                field="dataset.hub_id", fix="fetch it once with network access (it is cached), "
                                "or use the REFER files via dataset.annotations") from None
    out = []
    for hub_split, table in loaded.items():
        table = table.select_columns([c for c in HUB_COLUMNS if c in table.column_names])  # never decode images
        for i, row in enumerate(table):
            try:
                out.append(_hub_ref(row, hub_split, i, ds.hub_id))
            except (ValueError, TypeError, KeyError, OverflowError) as e:
                raise SpatialbenchError(f"row {i}: {e}", file=ds.hub_id, field=hub_split,
                                        fix="use a mirror with the REFER fields, or the REFER files") from None
    return out


# --- examples -------------------------------------------------------------------------------------------


def _source_splits(task: TaskSpec, available: set[str], origin: str) -> dict[str, str]:
    splits = dict(task.splits)
    for ours in SPLITS:
        if splits[ours] not in available:
            raise SpatialbenchError(f"our split '{ours}' maps to '{splits[ours]}', which {origin} lacks "
                                    f"(it has {sorted(available)})", field=f"splits.{ours}",
                                    fix="map our splits to the source's, e.g. splits: {train: train, "
                                    "validation: val, test: testA}")
    doubled = [s for s in SPLITS if list(splits.values()).count(splits[s]) > 1]
    if doubled:
        raise SpatialbenchError(f"splits {doubled} map to the same source split: the same expressions would "
                                "be used for training, selection and scoring", field="splits",
                                fix="give each of train, validation and test its own source split")
    return splits


def _check_extent(r: Ref, size: tuple[int, int]) -> None:
    x, y, w, h = r.bbox
    (width, height), slack = size, 0.02
    if x < -slack * width or y < -slack * height or x + w > (1 + slack) * width or y + h > (1 + slack) * height:
        raise SpatialbenchError(f"box [x, y, w, h] = {list(r.bbox)} reaches past the {width}x{height} image "
                                f"{r.file_name}", file=r.where, fix="pair the refs with their own instances.json; "
                                "a mirror's box must be COCO's [x, y, w, h] in pixels")


@register_source("refer")
def load(task: TaskSpec, ctx: DataContext) -> TaskData:
    if task.kind != "grounding" or task.target != "box":
        raise SpatialbenchError(f"the refer source serves grounding with a box target, not {task.kind} "
                                f"({task.target})", field="kind")
    ds: ReferDataset = task.dataset
    refs = _hub_refs(ds) if ds.hub_id else _local_refs(ds, ctx)
    origin = ds.hub_id if ds.hub_id else f"refs({ds.split_by}).p"
    splits = _source_splits(task, {r.split for r in refs}, origin)
    ours_of = {theirs: ours for ours, theirs in splits.items()}
    root = ctx.path(ds.images, "dataset.images", dataset=ds.dataset, split_by=ds.split_by)
    used = [r for r in refs if r.split in ours_of]
    paths = {r.file_name: root / r.file_name for r in used}
    require_files(list(paths.values()), f"COCO train2014 images for task '{task.name}'")
    sizes: dict[str, tuple[int, int]] = {}
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    skipped = empty = 0
    for r in used:
        if r.size is None and r.file_name not in sizes:
            try:
                with Image.open(paths[r.file_name]) as img:  # the header only; boxes are in stored-pixel frame
                    sizes[r.file_name] = img.size
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise SpatialbenchError(f"cannot read the image size: {e}", file=str(paths[r.file_name]),
                                        fix="re-download the image, or use a mirror that gives width/height") from None
        size = r.size or sizes[r.file_name]
        _check_extent(r, size)
        if r.bbox[2] <= 0 or r.bbox[3] <= 0:
            skipped += 1
            continue
        target = normalised(r.bbox, *size)
        for sent_id, text in r.sentences:
            uid = f"{r.ref_id}:{sent_id}"
            if uid in seen:
                raise SpatialbenchError(f"sentence {uid} occurs twice", file=origin, field="sent_ids")
            seen.add(uid)
            if text.strip():
                out[ours_of[r.split]].append(Example(uid, r.file_name, text, target, size, {"category": r.category}))
            else:
                empty += 1
    if skipped or empty:
        log.warning("%s: dropped %d refs whose box has no area and %d empty sentences", task.name, skipped, empty)
    return TaskData(out, FileImages(paths), None, None,
                    fingerprint(f"refer:{ds.dataset}:{ds.split_by}", LOADER_VERSION, out),
                    None if ds.hub_id else _objects(ds, ctx, set(paths)))


def _objects(ds: ReferDataset, ctx: DataContext, file_names: set[str]) -> dict:
    """Every annotated object of the task's images, from instances.json (a Hub mirror has only the referred
    ones, which would make an easier oracle than the image holds: it gets none)."""
    where = ctx.path(ds.annotations, "dataset.annotations", dataset=ds.dataset, split_by=ds.split_by)
    inst = read_instances(where / "instances.json")
    return annotated_objects(inst, {i: info.file_name for i, info in inst.images.items() if info.file_name in file_names})
