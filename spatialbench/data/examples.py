"""The unit every data source produces: examples over images, grouped by split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1, normalised to [0, 1]


@dataclass(frozen=True)
class Example:
    """One probe item.

    `query` is a tuple of category ids for explicit tasks and a string for implicit ones.
    `target` is a class index, or a normalised box for box-regression tasks.
    `image_size` is the original (width, height), so IoU can be computed in pixels.
    `groups` holds breakdown keys (e.g. relation, meta_category) for per-group metrics.
    """

    uid: str
    image_id: str
    query: tuple[int, ...] | str
    target: int | Box
    image_size: tuple[int, int]
    groups: dict[str, str] = field(default_factory=dict)


class ImageSource(Protocol):
    """Gives the pixels of every image a task refers to, and a key for their content."""

    def load(self, image_id: str) -> Image.Image:
        """The image as RGB."""

    def content_key(self, image_id: str) -> str:
        """A hex digest of the image content: the feature cache key."""


@dataclass
class TaskData:
    """What a data source hands the runner for one task."""

    splits: dict[str, list[Example]]  # "train", "validation", "test"
    images: ImageSource
    classes: list[str] | None = None  # names of the target classes (classification tasks)
    categories: list[str] | None = None  # explicit query vocabulary (category names)
    fingerprint: str = ""  # content digest of the examples
    # Every annotated object of each image, (category name, normalised box), whether or not an example asks
    # about it: what the oracle prompt is built from. None where the dataset has no boxes (VSR).
    objects: dict[str, list[tuple[str, Box]]] | None = None

    def image_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for items in self.splits.values():
            for ex in items:
                seen.setdefault(ex.image_id, None)
        return list(seen)

    def test_images_in_train(self) -> float:
        """Share of test items whose image also occurs in train (VSR's random split shares images)."""
        train = {ex.image_id for ex in self.splits["train"]}
        test = self.splits["test"]
        return sum(ex.image_id in train for ex in test) / max(len(test), 1)

    def mark_seen_images(self) -> None:
        """Where test shares images with train, put each test item in group "image": seen in train or not, so
        the headline is also reported on each (a probe may have memorised a seen image's layout)."""
        train = {ex.image_id for ex in self.splits["train"]}
        if not any(ex.image_id in train for ex in self.splits["test"]):
            return
        self.splits["test"] = [replace(ex, groups={**ex.groups, "image": SEEN if ex.image_id in train else UNSEEN})
                               for ex in self.splits["test"]]


SEEN, UNSEEN = "seen in train", "not in train"
