"""A small COCO layout on disk: instances files and images for train2017 and val2017."""

import json
from pathlib import Path

from PIL import Image

CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "car"}]


def coco_root(tmp: Path, train_boxes: list[list[float]]) -> tuple[Path, Path]:
    """train2017: images 1..6 at 100x80, each with one person and one dog; image 1's dog box is the one given
    (the first of train_boxes), further boxes go to image 2 as cars. val2017: two plain images."""
    def instances(image_ids, boxes_of):
        anns = [{"id": i * 10 + c, "image_id": i, "category_id": c, "bbox": box, "iscrowd": 0}
                for i in image_ids for c, box in boxes_of(i)]
        return {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 100, "height": 80} for i in image_ids],
                "annotations": anns, "categories": CATEGORIES}

    def train_boxes_of(i):
        boxes = [(1, [5, 5, 30, 40]), (2, train_boxes[0] if i == 1 else [50, 10, 30, 40])]
        if i == 2:
            boxes += [(3, b) for b in train_boxes[1:]]
        return boxes

    (tmp / "annotations").mkdir(parents=True)
    train = tmp / "annotations" / "instances_train2017.json"
    # allow_nan: a NaN box is written the way Python's json writes one, which json.load reads back.
    train.write_text(json.dumps(instances(range(1, 7), train_boxes_of), allow_nan=True))
    (tmp / "annotations" / "instances_val2017.json").write_text(
        json.dumps(instances([7, 8], lambda i: [(1, [5, 5, 30, 40]), (2, [50, 10, 30, 40])])))
    for split, ids in (("train2017", range(1, 7)), ("val2017", [7, 8])):
        (tmp / split).mkdir()
        for i in ids:
            Image.new("RGB", (100, 80), (i * 30, 90, 120)).save(tmp / split / f"{i:012d}.jpg")
    return tmp, train
