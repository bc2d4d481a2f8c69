"""Explicit probes from COCO instances: where is the named object, and how do two named objects relate.

Derivation, per source split (e.g. ``instances_train2017.json`` with the images of ``train2017/``):

- **Boxes.** A box with a non-finite value or a negative width or height, or one reaching more than 2%
  past its image's edge, makes the file invalid: the error names the annotation id, the file and the
  field (such a box means a corrupt file, another box format, or images paired with the wrong file).
  A zero-size box is never a probe object (it is below any ``min_area``); a loader warning counts them.
- **Objects.** An annotation is kept when it is not a crowd region, its category occurs exactly once
  among *all* the image's annotations (crowd and small ones included, so the category name alone picks
  out one object), and its box area w*h is at least ``min_area`` of the image area.
- **region_localization.** One example per kept object: query = (category index,), target = its box
  normalised by the image size, (x/W, y/H, (x+w)/W, (y+h)/H). Boxes are not clipped, so target x
  image_size gives back the COCO box; IoU is scored in pixels.
- **relation.** Unordered pairs of kept objects in an image. A stable hash of the two annotation ids
  picks which is the subject (so "left of" and "right of" are equally likely). The label comes from
  the box centres: dx, dy = centre(object) - centre(subject), in pixels; the larger of |dx|, |dy|
  decides the axis ("left of" / "right of" when |dx| > |dy|, else "above" / "below"; image y grows
  downwards). A pair is dropped as ambiguous when ||dx| - |dy|| < ``margin`` x max(W, H), or on an
  exact tie. Offsets are compared in pixels, not per-axis fractions, so the label is what the photo
  shows whatever an adapter's resize does to the aspect ratio. At most ``max_pairs_per_image`` pairs
  per image are kept: those with the smallest stable hash of (image id, annotation ids), which is
  deterministic and independent of the order of the file.
- **Vocabulary.** Category index = position in the file's categories sorted by id (COCO: 80 names).
  Relation classes: "left of", "right of", "above", "below".
- **Splits.** By default our train and validation both come from train2017 and test from val2017
  (COCO's test images have no public annotations); a task's ``splits`` may name other source splits
  (the names train / validation / test stand for these defaults). Where train and validation share a
  source split, an image goes to validation iff a stable hash of its image id, as a fraction in [0, 1),
  is below ``validation_fraction``: the two are disjoint by image, the same on every machine, and the
  same for both kinds of task. A test split that shares its source with another split is refused.
- Examples are ordered by image id, then annotation id (region) or pair hash (relation); uid is
  "<image id>:<annotation id>" or "<image id>:<subject id>-<object id>"; image_id is the file name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..errors import SpatialbenchError
from ..specs import SPLITS, CocoDataset, TaskSpec
from .examples import Box, Example, TaskData
from .images import FileImages, require_files
from .registry import DataContext, register_source
from .synthetic import RELATIONS, relation

log = logging.getLogger(__name__)

LOADER_VERSION = 1  # bump when example construction changes, so caches keyed on fingerprints miss
DEFAULT_SPLITS = {"train": "train2017", "validation": "train2017", "test": "val2017"}
HOW_TO_GET_INSTANCES = (
    "download annotations_trainval2017.zip from https://cocodataset.org/#download and unzip it under the "
    "COCO root (--coco-root or $COCO_ROOT), so that annotations/instances_<split>.json exist; "
    "or point dataset.instances at the file"
)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Annotation:
    id: int
    image_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h in pixels, as COCO writes it
    category_id: int
    iscrowd: bool


@dataclass(frozen=True)
class Instances:
    """A COCO instances file without segmentations: what the loaders need."""

    images: dict[int, ImageInfo]
    annotations: list[Annotation]
    categories: list[tuple[int, str, str]]  # (id, name, supercategory), sorted by id

    def category_names(self) -> dict[int, str]:
        return {cid: name for cid, name, _ in self.categories}


_CACHE: dict[tuple[str, int, int], Instances] = {}  # the last files read: region and relation tasks share one


def read_instances(path: Path) -> Instances:
    """Parse and check a COCO-style instances file; every defect names the file and the field."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise SpatialbenchError("COCO instances file not found", file=str(path), fix=HOW_TO_GET_INSTANCES) from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        try:
            with open(path, "rb") as f:
                raw = json.load(f)
        except (OSError, ValueError) as e:
            raise SpatialbenchError(f"not a readable JSON file: {e}", file=str(path),
                                    fix="re-download the annotations") from None
        if len(_CACHE) >= 2:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _parse(raw, str(path))
    return _CACHE[key]


def _parse(raw: object, file: str) -> Instances:
    def bad(field: str, message: str) -> SpatialbenchError:
        return SpatialbenchError(message, file=file, field=field, fix="use the COCO instances format: "
                                 "images[id, file_name, width, height], annotations[id, image_id, bbox, category_id]")

    if not isinstance(raw, dict):
        raise bad("(top level)", "expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise bad(key, "missing, or not a list")
    images: dict[int, ImageInfo] = {}
    for i, im in enumerate(raw["images"]):
        try:
            info = ImageInfo(int(im["id"]), str(im["file_name"]), int(im["width"]), int(im["height"]))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise bad(f"images[{i}]", f"needs id, file_name, width and height ({type(e).__name__}: {e})") from None
        if info.width <= 0 or info.height <= 0:
            raise bad(f"images[{i}]", f"image size must be positive, got {info.width}x{info.height}")
        images[info.id] = info
    categories = []
    for i, c in enumerate(raw["categories"]):
        try:
            categories.append((int(c["id"]), str(c["name"]), str(c.get("supercategory", ""))))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise bad(f"categories[{i}]", f"needs id and name ({type(e).__name__}: {e})") from None
    categories.sort()
    known = {cid for cid, _, _ in categories}
    annotations = []
    for i, a in enumerate(raw["annotations"]):
        try:
            x, y, w, h = (float(v) for v in a["bbox"])
            ann = Annotation(int(a["id"]), int(a["image_id"]), (x, y, w, h), int(a["category_id"]),
                             bool(a.get("iscrowd", 0)))
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise bad(f"annotations[{i}]", f"needs id, image_id, bbox [x, y, w, h] and category_id "
                                           f"({type(e).__name__}: {e})") from None
        if ann.image_id not in images:
            raise bad(f"annotations[{i}].image_id", f"image {ann.image_id} is not in images")
        if ann.category_id not in known:
            raise bad(f"annotations[{i}].category_id", f"category {ann.category_id} is not in categories")
        _check_box(ann, images[ann.image_id], f"annotations[{i}].bbox", file)
        annotations.append(ann)
    return Instances(images, annotations, categories)


EDGE_SLACK = 0.02  # a box may reach this fraction of the image side past an edge (rounding), no more


def _check_box(ann: Annotation, info: ImageInfo, field: str, file: str) -> None:
    """Refuse a box no correct COCO file holds: not finite, negative size, or well outside its image."""
    x, y, w, h = ann.bbox
    shown = f"annotation {ann.id}: box [x, y, w, h] = {list(ann.bbox)}"
    fix = "boxes are COCO's [x, y, w, h] in pixels of the image they annotate; re-download or correct the file"
    if not all(math.isfinite(v) for v in ann.bbox):
        raise SpatialbenchError(f"{shown} is not finite", file=file, field=field, fix=fix)
    if w < 0 or h < 0:
        raise SpatialbenchError(f"{shown} has a negative width or height", file=file, field=field, fix=fix)
    W, H = info.width, info.height
    if x < -EDGE_SLACK * W or y < -EDGE_SLACK * H or x + w > (1 + EDGE_SLACK) * W or y + h > (1 + EDGE_SLACK) * H:
        raise SpatialbenchError(f"{shown} reaches past the {W}x{H} image {info.file_name}", file=file, field=field,
                                fix=fix)


def normalised(bbox: tuple[float, float, float, float], width: int, height: int) -> Box:
    """A COCO [x, y, w, h] pixel box as (x0, y0, x1, y1) fractions of the image (not clipped)."""
    x, y, w, h = bbox
    return (x / width, y / height, (x + w) / width, (y + h) / height)


def unit_hash(*parts: object) -> float:
    """A fraction in [0, 1) from sha256: the same in every process and on every machine."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fingerprint(source: str, version: int, splits: dict[str, list[Example]]) -> str:
    rows = [[split, ex.uid, ex.image_id, ex.query, ex.target, ex.image_size, sorted(ex.groups.items())]
            for split in sorted(splits) for ex in splits[split]]
    payload = json.dumps([source, version, rows], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def probe_objects(inst: Instances, min_area: float) -> dict[int, list[Annotation]]:
    """Image id -> its kept objects (unique category, not crowd, big enough), by annotation id."""
    by_image: dict[int, list[Annotation]] = {}
    for ann in inst.annotations:
        by_image.setdefault(ann.image_id, []).append(ann)
    out: dict[int, list[Annotation]] = {}
    for image_id, anns in by_image.items():
        info = inst.images[image_id]
        counts: dict[int, int] = {}
        for ann in anns:
            counts[ann.category_id] = counts.get(ann.category_id, 0) + 1
        floor = min_area * info.width * info.height
        kept = [a for a in anns if counts[a.category_id] == 1 and not a.iscrowd and a.bbox[2] * a.bbox[3] >= floor]
        if kept:
            out[image_id] = sorted(kept, key=lambda a: a.id)
    return out


def annotated_objects(inst: Instances, file_names: dict[int, str]) -> dict[str, list[tuple[str, Box]]]:
    """Image file name -> every non-crowd object with a box of some area, (category name, normalised box), for
    the images in `file_names` (image id -> file name): what the oracle prompt is built from."""
    names = inst.category_names()
    out: dict[str, list[tuple[str, Box]]] = {name: [] for name in file_names.values()}
    for ann in inst.annotations:
        if ann.image_id in file_names and not ann.iscrowd and ann.bbox[2] > 0 and ann.bbox[3] > 0:
            info = inst.images[ann.image_id]
            out[file_names[ann.image_id]].append((names[ann.category_id], normalised(ann.bbox, info.width, info.height)))
    return out


def _xyxy(a: Annotation) -> tuple[float, float, float, float]:
    x, y, w, h = a.bbox
    return (x, y, x + w, y + h)


def relation_pairs(info: ImageInfo, objects: list[Annotation], margin: float, max_pairs: int):
    """Up to `max_pairs` (subject, object, relation index) of one image, chosen by a stable hash."""
    margin_px = margin * max(info.width, info.height)
    ranked = []
    for a, b in combinations(sorted(objects, key=lambda o: o.id), 2):
        rank = unit_hash("coco-pair", info.id, a.id, b.id)
        subject, obj = (b, a) if unit_hash("coco-subject", info.id, a.id, b.id) < 0.5 else (a, b)
        r = relation(_xyxy(subject), _xyxy(obj), margin_px)
        if r is not None:
            ranked.append((rank, subject, obj, r))
    ranked.sort(key=lambda t: t[0])
    return [(s, o, r) for _, s, o, r in ranked[:max_pairs]]


def split_sources(task: TaskSpec) -> dict[str, str]:
    """Our split -> COCO split. Our own split names (the TaskSpec default) stand for COCO's defaults."""
    splits = {ours: DEFAULT_SPLITS.get(theirs, theirs) for ours, theirs in task.splits.items()}
    shared = [s for s in ("train", "validation") if splits[s] == splits["test"]]
    if shared:
        raise SpatialbenchError(f"test shares the source split '{splits['test']}' with {shared}: test images "
                                "would leak into training or model selection", field="splits",
                                fix="map test to a split of its own, e.g. val2017")
    return splits


def _examples(task: TaskSpec, inst: Instances, keep: Callable[[int], bool]) -> list[tuple[ImageInfo, Example]]:
    ds: CocoDataset = task.dataset
    index = {cid: i for i, (cid, _, _) in enumerate(inst.categories)}
    names = inst.category_names()
    supers = {cid: sup for cid, _, sup in inst.categories}
    out = []
    for image_id, objects in sorted(probe_objects(inst, ds.min_area).items()):
        info = inst.images[image_id]
        if not keep(image_id):
            continue
        size = (info.width, info.height)
        if task.kind == "region_localization":
            for a in objects:
                groups = {"category": names[a.category_id], "supercategory": supers[a.category_id]}
                out.append((info, Example(f"{image_id}:{a.id}", info.file_name, (index[a.category_id],),
                                          normalised(a.bbox, *size), size, groups)))
        else:
            for s, o, r in relation_pairs(info, objects, ds.margin, ds.max_pairs_per_image):
                out.append((info, Example(f"{image_id}:{s.id}-{o.id}", info.file_name,
                                          (index[s.category_id], index[o.category_id]), r, size,
                                          {"relation": RELATIONS[r]})))
    return out


def _holdout(ours: str, fraction: float) -> Callable[[int], bool]:
    """Train and validation from one source split: an image is in validation iff its hash is below `fraction`."""
    return lambda image_id: (unit_hash("coco-validation", image_id) < fraction) == (ours == "validation")


def _check_task(task: TaskSpec) -> None:
    wanted = {"region_localization": "box", "relation": "class"}
    if task.kind not in wanted:
        raise SpatialbenchError(f"the coco source serves region_localization and relation, not {task.kind}",
                                field="kind")
    if task.target != wanted[task.kind]:
        raise SpatialbenchError(f"the coco source gives {task.kind} a '{wanted[task.kind]}' target, "
                                f"not '{task.target}'", field="target", fix="remove `target:` from the task")


@register_source("coco")
def load(task: TaskSpec, ctx: DataContext) -> TaskData:
    _check_task(task)
    ds: CocoDataset = task.dataset
    splits = split_sources(task)
    loaded: dict[str, Instances] = {}
    for source in dict.fromkeys(splits.values()):
        file = ctx.path(ds.instances, "dataset.instances", split=source)
        loaded[source] = read_instances(file)
        empty = [a.id for a in loaded[source].annotations if a.bbox[2] == 0 or a.bbox[3] == 0]
        if empty:
            log.warning("%s: %d annotation(s) in %s have a zero-size box and are not probe objects (ids %s%s)",
                        task.name, len(empty), file, empty[:5], ", ..." if len(empty) > 5 else "")
    vocab = [[name for _, name, _ in inst.categories] for inst in loaded.values()]
    if any(v != vocab[0] for v in vocab):
        raise SpatialbenchError(f"the instances files of {list(loaded)} list different categories, so a "
                                "category index would mean different things across splits", field="dataset.instances")
    out: dict[str, list[Example]] = {}
    paths: dict[str, Path] = {}
    objects: dict[str, list[tuple[str, Box]]] = {}
    for ours in SPLITS:
        source = splits[ours]
        shared = splits["train"] == splits["validation"] and ours in ("train", "validation")
        keep = _holdout(ours, ds.validation_fraction) if shared else (lambda image_id: True)
        root = ctx.path(ds.images, "dataset.images", split=source)
        out[ours] = []
        used: dict[int, str] = {}
        for info, ex in _examples(task, loaded[source], keep):
            out[ours].append(ex)
            paths.setdefault(ex.image_id, root / info.file_name)
            used[info.id] = ex.image_id
        objects.update(annotated_objects(loaded[source], used))
    require_files(list(paths.values()), f"COCO images for task '{task.name}'")
    classes = list(RELATIONS) if task.kind == "relation" else None
    return TaskData(out, FileImages(paths), classes, vocab[0], fingerprint("coco", LOADER_VERSION, out), objects)


# COCO's 80 category names by id (2014 and 2017 share them): for sources that give only category ids.
COCO_CATEGORY_NAMES: dict[int, str] = dict(enumerate((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "", "backpack", "umbrella", "", "", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
    "chair", "couch", "potted plant", "bed", "", "dining table", "", "", "toilet", "", "tv", "laptop",
    "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush"), start=1))
COCO_CATEGORY_NAMES = {k: v for k, v in COCO_CATEGORY_NAMES.items() if v}
