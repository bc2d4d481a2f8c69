import re

import numpy as np
import pytest

from spatialbench.data.synthetic import (
    BACKGROUND,
    CATEGORIES,
    COLOURS,
    KINDS,
    MAX_SIDE,
    MIN_SIDE,
    OPPOSITE,
    RELATIONS,
    RGB,
    SHAPES,
    SyntheticImages,
    build_task_data,
    generate_scenes,
    grid_cell,
    held_out_categories,
    relation,
    render,
)
from spatialbench.specs import SPLITS, SyntheticDataset

IDENTITY = {s: s for s in SPLITS}
SMALL = {"train": 50, "validation": 20, "test": 30}
REL = "|".join(RELATIONS)


def dataset(**options):
    return SyntheticDataset(**{"image_size": 64, "sizes": SMALL, **options})


def all_scenes(ds):
    return [scene for split in SPLITS for scene in generate_scenes(ds, split)]


def scenes_of(data):
    return data.images.scenes


def by_name(scene, name):
    (obj,) = [o for o in scene.objects if CATEGORIES[o.category] == name]
    return obj


def norm(scene, box):
    return tuple(v / scene.image_size for v in box)


# --- vocabulary -------------------------------------------------------------------------------------


def test_vocabulary():
    assert len(CATEGORIES) == 24 and len(set(CATEGORIES)) == 24
    assert CATEGORIES[0] == "red circle" and CATEGORIES[len(SHAPES)] == "green circle"
    assert len(set(RGB.values())) == len(COLOURS) and BACKGROUND not in RGB.values()
    for i, r in enumerate(OPPOSITE):
        assert OPPOSITE[r] == i and r != i


# --- scenes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind):
    ds = dataset(zero_shot=True)
    a, b = build_task_data(kind, ds, IDENTITY), build_task_data(kind, ds, IDENTITY)
    assert a.splits == b.splits and a.fingerprint == b.fingerprint and a.classes == b.classes
    assert all(a.splits[s] for s in SPLITS)
    image_id = a.splits["test"][0].image_id
    assert a.images.load(image_id).tobytes() == b.images.load(image_id).tobytes()
    assert a.images.load(image_id).tobytes() == a.images.load(image_id).tobytes()
    assert a.images.content_key(image_id) == b.images.content_key(image_id)


def test_seeds_and_sources_differ():
    a, b = dataset(seed=0), dataset(seed=1)
    boxes = lambda scenes: [[o.box for o in s.objects] for s in scenes]  # noqa: E731
    assert boxes(generate_scenes(a, "train")) != boxes(generate_scenes(b, "train"))
    assert boxes(generate_scenes(a, "train")) != boxes(generate_scenes(a, "train", "other"))
    assert build_task_data("relation", a, IDENTITY).fingerprint != build_task_data("relation", b, IDENTITY).fingerprint
    renamed = build_task_data("relation", a, {"train": "x", "validation": "y", "test": "z"})
    assert all(ex.image_id.startswith("synth-0-z-") for ex in renamed.splits["test"])


def test_scene_ids_and_split_sizes():
    ds = dataset()
    for split in SPLITS:
        scenes = generate_scenes(ds, split)
        assert len(scenes) == SMALL[split]
        assert len({s.id for s in scenes}) == len(scenes)
        assert scenes[3].id == f"synth-0-{split}-3"
    # scene i does not depend on how many scenes follow it
    longer = dataset(sizes={"train": 80, "validation": 20, "test": 30})
    assert [s.objects for s in generate_scenes(longer, "train")[:50]] == [s.objects for s in generate_scenes(ds, "train")]


@pytest.mark.parametrize("options", [{}, {"image_size": 224}, {"min_objects": 6, "max_objects": 8}])
def test_layout_invariants(options):
    ds = dataset(**options)
    size = ds.image_size
    counts = set()
    for scene in all_scenes(ds):
        objs = scene.objects
        counts.add(len(objs))
        assert ds.min_objects <= len(objs) <= ds.max_objects
        assert len({o.category for o in objs}) == len(objs)
        for o in objs:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert round(MIN_SIDE * size) <= x1 - x0 <= round(MAX_SIDE * size) and x1 - x0 == y1 - y0
            assert CATEGORIES[o.category] == f"{o.colour} {o.shape}"
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                # strictly apart on at least one axis (a gap, not just touching)
                assert a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
    assert counts == set(range(ds.min_objects, ds.max_objects + 1))


def test_shapes_repeat_with_different_colours():
    scenes = all_scenes(dataset())
    assert any(len({o.shape for o in s.objects}) < len(s.objects) for s in scenes)


def test_scenes_shared_across_kinds_and_options():
    base = dataset()
    reference = build_task_data("region_localization", base, IDENTITY)
    variants = [
        ("relation", dataset(relation_margin=0.2)),
        ("vsr", dataset(zero_shot=True)),
        ("grounding", dataset(relation_margin=0.0)),
        ("region_localization", dataset(grid=3)),
    ]
    for kind, ds in variants:
        data = build_task_data(kind, ds, IDENTITY)
        ids = data.image_ids()
        assert ids
        for image_id in ids:
            assert data.images.content_key(image_id) == reference.images.content_key(image_id)
    # and the content key does see the pixels
    keys = {reference.images.content_key(i) for i in reference.image_ids()}
    assert len(keys) == len(reference.image_ids())


def test_render_matches_boxes():
    ds = SyntheticDataset(sizes={"train": 15, "validation": 1, "test": 1})  # default 224 px
    for scene in generate_scenes(ds, "train"):
        image = render(scene)
        assert image.mode == "RGB" and image.size == (224, 224)
        pixels = np.asarray(image)
        covered = np.zeros(pixels.shape[:2], bool)
        for o in scene.objects:
            x0, y0, x1, y1 = o.box
            covered[y0:y1, x0:x1] = True
            colour = np.array(RGB[o.colour])
            assert (pixels[(y0 + y1) // 2, (x0 + x1) // 2] == colour).all(), (scene.id, o)
            # the box is tight: the painted pixels inside it touch all four edges
            mask = (pixels[y0:y1, x0:x1] == colour).all(axis=-1)
            rows, cols = np.nonzero(mask)
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, y1 - y0 - 1, 0, x1 - x0 - 1)
            # every pixel of this colour lies in some box of an object of this colour
            same = np.zeros_like(covered)
            for p in scene.objects:
                if p.colour == o.colour:
                    same[p.box[1] : p.box[3], p.box[0] : p.box[2]] = True
            assert not ((pixels == colour).all(axis=-1) & ~same).any()
        assert (pixels[~covered] == np.array(BACKGROUND)).all()


def test_images_source():
    ds = dataset()
    scenes = {s.id: s for s in generate_scenes(ds, "train")}
    images = SyntheticImages(scenes)
    first, second = list(scenes)[:2]
    assert images.load(first).size == (64, 64)
    assert re.fullmatch(r"[0-9a-f]{64}", images.content_key(first))
    assert images.content_key(first) != images.content_key(second)


# --- relation and grid --------------------------------------------------------------------------------


def test_relation_hand_made():
    a = (0, 0, 10, 10)
    assert relation(a, (50, 5, 60, 15), 5) == RELATIONS.index("left of")
    assert relation((50, 5, 60, 15), a, 5) == RELATIONS.index("right of")
    assert relation(a, (3, 40, 13, 50), 5) == RELATIONS.index("above")
    assert relation((3, 40, 13, 50), a, 5) == RELATIONS.index("below")
    near_diagonal = (40, 38, 50, 48)  # dx = 40, dy = 38
    assert relation(a, near_diagonal, 5) is None
    assert relation(a, near_diagonal, 1) == RELATIONS.index("left of")
    assert relation(a, (30, 30, 40, 40), 0) is None  # exact diagonal is ambiguous even with no margin


def test_grid_cell_hand_made():
    assert grid_cell((0, 0, 10, 10), 90, 3) == 0
    assert grid_cell((80, 80, 90, 90), 90, 3) == 8
    assert grid_cell((40, 0, 50, 10), 90, 3) == 1  # centre x 45 -> column 1
    assert grid_cell((0, 62, 10, 72), 90, 3) == 6  # centre y 67 -> row 2
    assert grid_cell((50, 20, 60, 30), 90, 3) == 1  # centre (55, 25): row 0, column 1
    assert grid_cell((0, 25, 10, 35), 90, 3) == 3  # centre y 30 sits on the boundary: row 1


# --- tasks --------------------------------------------------------------------------------------------


def test_region_localization_boxes_and_grid():
    ds = dataset()
    data = build_task_data("region_localization", ds, IDENTITY)
    scenes = scenes_of(data)
    assert data.classes is None and data.categories == CATEGORIES
    for ex in data.splits["train"]:
        scene = scenes[ex.image_id]
        (obj,) = [o for o in scene.objects if o.category == ex.query[0]]
        assert ex.target == norm(scene, obj.box) and ex.image_size == (64, 64)
        assert ex.groups == {"shape": obj.shape, "colour": obj.colour}
    assert sum(len(s.objects) for s in generate_scenes(ds, "train")) == len(data.splits["train"])

    gridded = build_task_data("region_localization", dataset(grid=4), IDENTITY)
    assert gridded.classes == [f"cell {r},{c}" for r in range(4) for c in range(4)]
    seen = set()
    for ex in gridded.splits["train"]:
        (obj,) = [o for o in scenes[ex.image_id].objects if o.category == ex.query[0]]
        cx, cy = (obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2
        assert ex.target == int(cy // 16) * 4 + int(cx // 16)
        seen.add(ex.target)
    assert len(seen) > 8


def test_relation_task():
    ds = dataset()
    data = build_task_data("relation", ds, IDENTITY)
    assert data.classes == list(RELATIONS)
    margin = ds.relation_margin * ds.image_size
    per_scene = {}
    for ex in data.splits["train"]:
        scene = scenes_of(data)[ex.image_id]
        a, b = (by_name(scene, CATEGORIES[c]) for c in ex.query)
        assert a != b and ex.target == relation(a.box, b.box, margin) is not None
        assert ex.groups == {"relation": RELATIONS[ex.target]}
        per_scene[ex.image_id] = per_scene.get(ex.image_id, 0) + 1
    assert max(per_scene.values()) <= 6
    assert {ex.target for ex in data.splits["train"]} == set(range(4))


def parse_statement(scene, text):
    m = re.fullmatch(rf"the (\w+ \w+) is ({REL}) the (\w+ \w+)", text)
    assert m, text
    return by_name(scene, m[1]), RELATIONS.index(m[2]), by_name(scene, m[3])


def test_vsr_balanced_and_correct():
    ds = dataset(sizes={"train": 300, "validation": 10, "test": 10})
    data = build_task_data("vsr", ds, IDENTITY)
    assert data.classes == ["false", "true"]
    margin = ds.relation_margin * ds.image_size
    items = data.splits["train"]
    assert len(items) > 300
    for ex in items:
        a, word, b = parse_statement(scenes_of(data)[ex.image_id], ex.query)
        truth = relation(a.box, b.box, margin)
        assert truth is not None
        assert (word == truth) == (ex.target == 1)
        if ex.target == 0:
            assert word == OPPOSITE[truth]
        assert ex.groups == {"relation": RELATIONS[word]}
    # Minimal pairs: every true "A w B" has its false "B w A" in the same image (same words, same counts), every
    # clear pair of a scene is asked about, and which object is the true statement's subject is drawn at random.
    by_image: dict[str, set] = {}
    for ex in items:
        by_image.setdefault(ex.image_id, set()).add((ex.query, ex.target))
    subjects_first = 0
    for image_id, statements in by_image.items():
        scene = scenes_of(data)[image_id]
        for query, target in statements:
            a, word, b = parse_statement(scene, query)
            assert (f"the {b.name} is {RELATIONS[word]} the {a.name}", 1 - target) in statements
            subjects_first += target == 1 and a.category < b.category
        clear = {frozenset((a.category, b.category)) for a in scene.objects for b in scene.objects
                 if a is not b and relation(a.box, b.box, margin) is not None}
        assert len(statements) == 2 * len(clear)
    assert sum(ex.target for ex in items) * 2 == len(items)
    assert 0.4 < subjects_first / (len(items) / 2) < 0.6


def test_vsr_zero_shot():
    ds = dataset(zero_shot=True, sizes={"train": 80, "validation": 40, "test": 80})
    held = held_out_categories(ds)
    assert len(held) == 6 and held == held_out_categories(ds) != held_out_categories(dataset(seed=1))
    # every colour and every shape remains in training
    kept = set(range(24)) - held
    assert {c // 4 for c in kept} == set(range(6)) and {c % 4 for c in kept} == set(range(4))
    data = build_task_data("vsr", ds, IDENTITY)
    for split in SPLITS:
        assert data.splits[split]
        for ex in data.splits[split]:
            a, _, b = parse_statement(scenes_of(data)[ex.image_id], ex.query)
            novel = a.category in held or b.category in held
            assert novel == (split == "test"), (split, ex.query)


def test_grounding_unique():
    ds = SyntheticDataset(sizes={"train": 150, "validation": 1, "test": 1})  # default 224 px
    data = build_task_data("grounding", ds, IDENTITY)
    margin = ds.relation_margin * ds.image_size
    items = data.splits["train"]
    assert len(items) > 150 and data.classes is None
    repeated = 0
    for ex in items:
        scene = scenes_of(data)[ex.image_id]
        m = re.fullmatch(rf"the (\w+) ({REL}) the (\w+ \w+)", ex.query)
        assert m and m[1] in SHAPES, ex.query
        rel, anchor = RELATIONS.index(m[2]), by_name(scene, m[3])
        matches = [o for o in scene.objects
                   if o.shape == m[1] and o is not anchor and relation(o.box, anchor.box, margin) == rel]
        assert len(matches) == 1, ex.query
        assert ex.target == norm(scene, matches[0].box)
        assert ex.groups == {"relation": m[2]}
        repeated += sum(o.shape == m[1] for o in scene.objects) > 1
    assert repeated > len(items) / 3  # the spatial qualifier matters in many expressions


def test_uids_and_fingerprint():
    data = build_task_data("grounding", dataset(), IDENTITY)
    uids = [ex.uid for s in SPLITS for ex in data.splits[s]]
    assert len(set(uids)) == len(uids)
    assert all(ex.uid.startswith(ex.image_id + ":") for s in SPLITS for ex in data.splits[s])
    assert re.fullmatch(r"[0-9a-f]{64}", data.fingerprint)
    other = build_task_data("grounding", dataset(relation_margin=0.15), IDENTITY)
    assert other.fingerprint != data.fingerprint


def test_bad_arguments():
    ds = dataset()
    with pytest.raises(ValueError, match="unknown synthetic task kind"):
        build_task_data("counting", ds, IDENTITY)
    with pytest.raises(ValueError, match="distinct"):
        build_task_data("vsr", ds, {"train": "train", "validation": "train", "test": "test"})
    with pytest.raises(ValueError, match="lacks"):
        build_task_data("vsr", ds, {"train": "train", "test": "test"})
