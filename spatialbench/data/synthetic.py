"""Seeded synthetic scenes of coloured shapes, with exact boxes and relations, serving four probe tasks."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from spatialbench.data.examples import Box, Example, TaskData
from spatialbench.specs import SPLITS, SyntheticDataset

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")
RGB = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
       "yellow": (235, 210, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
BACKGROUND = (128, 128, 128)  # grey is none of the colours, so every painted pixel belongs to an object
CATEGORIES = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]  # id = colour * 4 + shape
RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = (1, 0, 3, 2)  # index of the converse relation: a left of b <=> b right of a
KINDS = ("region_localization", "relation", "vsr", "grounding")

MIN_SIDE, MAX_SIDE, GAP = 0.15, 0.25, 0.02  # fractions of the image side
RELATION_PAIRS_PER_SCENE = 6
GROUNDING_PER_SCENE = 4  # referring expressions per scene, each for another target, as many as the scene allows
# Bump when layout, rendering or example construction changes, so stale caches keyed on fingerprints miss.
GENERATOR_VERSION = 2  # 2: vsr as minimal pairs over every pair; up to 4 grounding expressions per scene


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process (Python's hash() is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    category: int
    box: tuple[int, int, int, int]  # pixels; x1, y1 exclusive, so the box is exactly the painted extent

    @property
    def name(self) -> str:
        return CATEGORIES[self.category]


@dataclass
class Scene:
    id: str
    image_size: int  # square images: width == height
    objects: list[SceneObject] = field(default_factory=list)

    def normalised(self, obj: SceneObject) -> Box:
        s = self.image_size
        x0, y0, x1, y1 = obj.box
        return (x0 / s, y0 / s, x1 / s, y1 / s)


def _object(category: int, box: tuple[int, int, int, int]) -> SceneObject:
    return SceneObject(SHAPES[category % len(SHAPES)], COLOURS[category // len(SHAPES)], category, box)


def _place(rng: random.Random, n: int, size: int, tries: int = 100) -> list[tuple[int, int, int, int]] | None:
    lo, hi = max(1, round(MIN_SIDE * size)), max(1, round(MAX_SIDE * size))
    gap = max(1, round(GAP * size))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(n):
        side = rng.randint(lo, hi)
        for _ in range(tries):
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x0, y0, x0 + side, y0 + side)
            if all(box[2] + gap <= o[0] or o[2] + gap <= box[0] or box[3] + gap <= o[1] or o[3] + gap <= box[1]
                   for o in boxes):  # separated by at least `gap` on some axis
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _make_scene(ds: SyntheticDataset, scene_id: str, rng: random.Random) -> Scene:
    n = rng.randint(ds.min_objects, ds.max_objects)
    categories = rng.sample(range(len(CATEGORIES)), n)  # unique, so a category name picks one object
    # Whole-layout retries keep the drawn count in almost every case; fewer objects is the last resort.
    for count in range(n, 1, -1):
        for _ in range(50):
            boxes = _place(rng, count, ds.image_size)
            if boxes:
                return Scene(scene_id, ds.image_size, [_object(c, box) for c, box in zip(categories, boxes)])
    raise RuntimeError(f"could not place two objects in a {ds.image_size}px image")


def generate_scenes(ds: SyntheticDataset, split: str, source_split: str | None = None) -> list[Scene]:
    """`ds.sizes[split]` scenes; `source_split` (default `split`) names the seed stream.

    Only seed, image size, object counts and sizes matter, so tasks sharing those share images.
    Each scene has its own rng, so scene i does not change when the split grows.
    """
    if split not in ds.sizes:
        raise ValueError(f"unknown split {split!r}; expected one of {list(ds.sizes)}")
    source = source_split or split
    return [_make_scene(ds, f"synth-{ds.seed}-{source}-{i}", random.Random(stable_seed(ds.seed, source, i)))
            for i in range(ds.sizes[split])]


def render(scene: Scene) -> Image.Image:
    return paint(scene, "RGB", BACKGROUND, lambda obj: RGB[obj.colour])


def paint(scene: Scene, mode: str, background, fill: Callable[[SceneObject], object]) -> Image.Image:
    """The scene's shapes drawn in `mode`, each in `fill(obj)`: its colour, or (pretraining) a label."""
    size = scene.image_size
    image = Image.new(mode, (size, size), background)
    draw = ImageDraw.Draw(image)  # no anti-aliasing: every pixel is background or exactly one object's
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        right, bottom = x1 - 1, y1 - 1  # PIL includes the end coordinate
        xc, yc = (x0 + right) / 2, (y0 + bottom) / 2
        colour = fill(obj)
        if obj.shape == "circle":
            draw.ellipse((x0, y0, right, bottom), fill=colour)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, right, bottom), fill=colour)
        elif obj.shape == "triangle":
            draw.polygon([(x0, bottom), (right, bottom), (xc, y0)], fill=colour)
        else:
            draw.polygon([(xc, y0), (right, yc), (xc, bottom), (x0, yc)], fill=colour)
    return image


class SyntheticImages:
    """ImageSource over generated scenes: pixels are rendered on demand, never stored."""

    def __init__(self, scenes: dict[str, Scene]):
        self.scenes = scenes
        self._keys: dict[str, str] = {}

    def load(self, image_id: str) -> Image.Image:
        return render(self.scenes[image_id])

    def content_key(self, image_id: str) -> str:
        if image_id not in self._keys:
            image = self.load(image_id)
            digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
            digest.update(image.tobytes())
            self._keys[image_id] = digest.hexdigest()
        return self._keys[image_id]


def relation(a: tuple[float, ...], b: tuple[float, ...], margin_px: float) -> int | None:
    """Index in RELATIONS of "a <rel> b" on the dominant axis of the centre offset, or None if ambiguous."""
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    # A pair near the diagonal could be read either way; an exact tie is ambiguous even at margin 0.
    if abs(dx) == abs(dy) or abs(abs(dx) - abs(dy)) < margin_px:
        return None
    if abs(dx) > abs(dy):
        return 0 if dx > 0 else 1
    return 2 if dy > 0 else 3  # image y grows downwards


def grid_cell(box: tuple[float, ...], image_size: int, grid: int) -> int:
    """Row-major index of the grid x grid cell holding the box centre (box in pixels)."""
    col = min(int((box[0] + box[2]) / 2 * grid / image_size), grid - 1)
    row = min(int((box[1] + box[3]) / 2 * grid / image_size), grid - 1)
    return row * grid + col


def held_out_categories(ds: SyntheticDataset) -> set[int]:
    """Six held-out combos: one per colour, each shape at most twice, so every part is seen in training."""
    rng = random.Random(stable_seed(ds.seed, "zero-shot"))
    shapes = list(range(len(SHAPES))) + rng.sample(range(len(SHAPES)), len(COLOURS) - len(SHAPES))
    rng.shuffle(shapes)
    return {colour * len(SHAPES) + shape for colour, shape in enumerate(shapes)}


def _pairs(scene: Scene, ds: SyntheticDataset) -> list[tuple[SceneObject, SceneObject, int]]:
    margin = ds.relation_margin * ds.image_size
    return [(a, b, r) for a in scene.objects for b in scene.objects
            if a is not b and (r := relation(a.box, b.box, margin)) is not None]


Item = tuple[tuple[int, ...] | str, int | Box, dict[str, str]]


def _region(scene: Scene, ds: SyntheticDataset, rng: random.Random, split: str) -> list[Item]:
    items: list[Item] = []
    for obj in scene.objects:
        target = grid_cell(obj.box, scene.image_size, ds.grid) if ds.grid else scene.normalised(obj)
        items.append(((obj.category,), target, {"shape": obj.shape, "colour": obj.colour}))
    return items


def _relation(scene: Scene, ds: SyntheticDataset, rng: random.Random, split: str) -> list[Item]:
    pairs = _pairs(scene, ds)
    chosen = rng.sample(pairs, min(RELATION_PAIRS_PER_SCENE, len(pairs)))
    return [((a.category, b.category), r, {"relation": RELATIONS[r]}) for a, b, r in chosen]


def _vsr(scene: Scene, ds: SyntheticDataset, rng: random.Random, split: str) -> list[Item]:
    """Minimal pairs: for every unordered pair with a clear relation, "the A is <rel> the B" (true) and "the B is
    <rel> the A" (false), A drawn at random from the two. The statements share the image, the words and their
    counts, so only word order bound to where things are tells them apart: a bag of words scores exactly
    chance, labels are 50/50, and no caption's truth follows from the caption alone."""
    held = held_out_categories(ds) if ds.zero_shot else set()
    # Zero-shot: held-out combos are never named in train/validation and always named in test.
    pairs = [(a, b, r) for a, b, r in _pairs(scene, ds)
             if a.category < b.category
             and (not ds.zero_shot or (a.category in held or b.category in held) == (split == "test"))]
    rng.shuffle(pairs)
    items: list[Item] = []
    for a, b, r in pairs:
        if rng.random() < 0.5:  # which object is the true statement's subject: else a name's order would give it away
            a, b, r = b, a, OPPOSITE[r]
        word = RELATIONS[r]
        items.append((f"the {a.name} is {word} the {b.name}", 1, {"relation": word}))
        items.append((f"the {b.name} is {word} the {a.name}", 0, {"relation": word}))
    return items


def _grounding(scene: Scene, ds: SyntheticDataset, rng: random.Random, split: str) -> list[Item]:
    margin = ds.relation_margin * ds.image_size
    preferred, fallback = [], []
    for t, a, r in _pairs(scene, ds):
        rivals = [o for o in scene.objects if o.shape == t.shape and o is not t and o is not a]
        # Rivals must clearly fail the relation: a borderline one would make the expression ambiguous.
        if any(relation(o.box, a.box, margin) in (r, None) for o in rivals):
            continue
        shape_repeats = sum(o.shape == t.shape for o in scene.objects) > 1
        (preferred if shape_repeats else fallback).append((t, a, r))
    rng.shuffle(preferred)
    rng.shuffle(fallback)
    items: list[Item] = []
    targets: set[int] = set()
    for t, a, r in preferred + fallback:  # spatial qualifier matters first; unique shapes only to fill up
        if t.category not in targets and len(items) < GROUNDING_PER_SCENE:
            targets.add(t.category)
            word = RELATIONS[r]
            items.append((f"the {t.shape} {word} the {a.name}", scene.normalised(t), {"relation": word}))
    return items


BUILDERS: dict[str, Callable[[Scene, SyntheticDataset, random.Random, str], list[Item]]] = {
    "region_localization": _region, "relation": _relation, "vsr": _vsr, "grounding": _grounding}


def fingerprint(splits: dict[str, list[Example]]) -> str:
    rows = [[split, ex.uid, ex.image_id, ex.query, ex.target, ex.image_size, sorted(ex.groups.items())]
            for split in sorted(splits) for ex in splits[split]]
    payload = json.dumps([GENERATOR_VERSION, rows], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def build_task_data(kind: str, ds: SyntheticDataset, splits: dict[str, str]) -> TaskData:
    """Examples for `kind` over scenes of every split; `splits` maps our split names to seed streams."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown synthetic task kind {kind!r}; expected one of {list(KINDS)}")
    if missing := [s for s in SPLITS if s not in splits]:
        raise ValueError(f"splits lacks {missing}")
    sources = [splits[s] for s in SPLITS]
    if len(set(sources)) < len(sources):
        # Equal stream names would give two splits the very same scenes: test images leaking into training.
        raise ValueError(f"synthetic splits must name distinct sources, got {splits}")
    builder = BUILDERS[kind]
    scenes: dict[str, Scene] = {}
    out: dict[str, list[Example]] = {}
    size = (ds.image_size, ds.image_size)
    for split in SPLITS:
        examples = []
        for scene in generate_scenes(ds, split, splits[split]):
            scenes[scene.id] = scene
            rng = random.Random(stable_seed(ds.seed, kind, scene.id))  # per scene: one scene never shifts another
            for n, (query, target, groups) in enumerate(builder(scene, ds, rng, split)):
                examples.append(Example(f"{scene.id}:{n}", scene.id, query, target, size, groups))
        out[split] = examples
    cells = [f"cell {r},{c}" for r in range(ds.grid) for c in range(ds.grid)] if ds.grid else None
    classes = {"region_localization": cells, "relation": list(RELATIONS), "vsr": ["false", "true"]}.get(kind)
    objects = {sid: [(o.name, scene.normalised(o)) for o in scene.objects] for sid, scene in scenes.items()}
    return TaskData(out, SyntheticImages(scenes), classes, list(CATEGORIES), fingerprint(out), objects)
