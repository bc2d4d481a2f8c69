"""Pretraining the embedded testbed: a small BLIP-2 trained here on synthetic scenes, in two stages.

Stage 1 trains the vision encoder as a dense detector: every patch names the object under its centre (or
background) and regresses that object's box, so patch features say what is where. Stage 2 freezes it, as
BLIP-2 does, and trains the query tokens, Q-Former, projection and the small language model to caption the
scene: its objects named in a fixed order (by category, never by place). The object-aware variant adds one
loss: from the query outputs, a small head must give every named object's box (BoxHead). Both variants
see the same captions and scenes with the same budget, so they differ only in whether "where" was asked.

The scenes come from the synthetic generator under a seed and stream names of their own, so no task's
scene (any dataset seed: task streams are named train/validation/test) is ever seen in pretraining.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..data.synthetic import CATEGORIES, Scene, generate_scenes, paint
from ..specs import SyntheticDataset

PRETRAIN_SEED = 7919  # no task uses it, and the stream names below are no task's
# Objective -> weight of the box loss beside the captioning loss: the same captions and budget for both.
OBJECTIVES = {"names": 0.0, "names+boxes": 5.0}


@dataclass(frozen=True)
class Budget:
    """What one stage trains on and for how long; both captioning objectives get the same one."""

    train_scenes: int
    validation_scenes: int
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05


def scenes(split: str, n: int) -> list[Scene]:
    """`n` pretraining scenes of `split` (train or validation): the tasks' image size and object counts."""
    ds = SyntheticDataset(seed=PRETRAIN_SEED, image_size=224, min_objects=2, max_objects=5,
                          sizes={"train": n, "validation": n, "test": n})
    return generate_scenes(ds, split, f"pretrain-{split}")


def patch_targets(scene: Scene, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch (row-major): 1 + the category of the object painted under the patch centre (0: background),
    and that object's box in [0, 1] (zeros on background): a dense detection target."""
    labels = paint(scene, "L", 0, lambda obj: obj.category + 1)
    step = scene.image_size / grid
    centres = [int((i + 0.5) * step) for i in range(grid)]
    ids = torch.tensor([labels.getpixel((x, y)) for y in centres for x in centres])
    boxes = torch.zeros(len(ids), 4)
    for obj in scene.objects:
        boxes[ids == obj.category + 1] = torch.tensor(obj.box, dtype=torch.float) / scene.image_size
    return ids, boxes


def caption(scene: Scene) -> str:
    """The scene's objects by category id: what is there, never where."""
    return " ".join(CATEGORIES[obj.category] for obj in sorted(scene.objects, key=lambda o: o.category))


def object_targets(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per scene, padded to the most objects: category ids, boxes in [0, 1], and which slots hold an object."""
    most = max(len(s.objects) for s in scenes)
    cats = torch.zeros(len(scenes), most, dtype=torch.long)
    boxes = torch.zeros(len(scenes), most, 4)
    present = torch.zeros(len(scenes), most, dtype=torch.bool)
    for i, scene in enumerate(scenes):
        for j, obj in enumerate(scene.objects):
            cats[i, j], present[i, j] = obj.category, True
            boxes[i, j] = torch.tensor(obj.box, dtype=torch.float) / scene.image_size
    return cats, boxes, present


class BoxHead(torch.nn.Module):
    """The object-aware objective: each named object's box, read from the query outputs by one attention.

    A category embedding attends over the queries; an MLP maps what it read to a box. Kept small so the
    queries, not the head, must carry where each object is."""

    def __init__(self, width: int, categories: int):
        super().__init__()
        self.category = torch.nn.Embedding(categories, width)
        self.out = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU(), torch.nn.Linear(width, 4))

    def forward(self, tokens: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        q = self.category(categories)  # [B, K, W]
        weights = torch.softmax(q @ tokens.transpose(1, 2) / tokens.shape[-1] ** 0.5, -1)
        return self.out(weights @ tokens).sigmoid()  # [B, K, 4]


def digest(module: torch.nn.Module) -> str:
    """sha256 over the state dict's names and bytes: equal weights, equal digest, whatever the file layout."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def schedule(optimizer: torch.optim.Optimizer, budget: Budget) -> torch.optim.lr_scheduler.LambdaLR:
    warm = max(1, round(budget.warmup * budget.steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, budget.steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimiser(params: list[torch.nn.Parameter], budget: Budget) -> torch.optim.AdamW:
    """AdamW that decays weight matrices only: norms, biases and the [1, N, W] query tokens and position
    tables are spared, as BLIP-2's recipe spares them."""
    decay = [p for p in params if p.ndim >= 2 and p.shape[0] > 1]
    rest = [p for p in params if not (p.ndim >= 2 and p.shape[0] > 1)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": budget.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=budget.lr)


@dataclass
class Curve:
    """What a stage records: train loss every `every` steps and the validation metrics before and after."""

    stage: str
    budget: dict
    train_loss: list[tuple[int, float]]
    before: dict[str, float]
    after: dict[str, float]
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def train_stage(stage: str, params: list[torch.nn.Parameter], loss_fn: Callable[[torch.Tensor], torch.Tensor],
                evaluate: Callable[[], dict[str, float]], n_train: int, budget: Budget, seed: int,
                log: Callable[[str], None] = lambda s: None, every: int = 25) -> Curve:
    """Minibatch AdamW over indices of the train pool; `loss_fn(indices)` gives the batch loss."""
    start = time.perf_counter()
    before = evaluate()
    log(f"pretraining {stage} (once, then cached): {budget.steps} steps; validation before: {before}")
    opt = optimiser(params, budget)
    sched = schedule(opt, budget)
    gen = torch.Generator().manual_seed(seed)
    curve: list[tuple[int, float]] = []
    running = []
    for step in range(budget.steps):
        idx = torch.randint(n_train, (budget.batch_size,), generator=gen)
        loss = loss_fn(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == budget.steps:
            curve.append((step + 1, round(sum(running) / len(running), 4)))
            running = []
            if len(curve) % max(1, budget.steps // (10 * every)) == 0 or step + 1 == budget.steps:  # ~10 lines
                log(f"pretraining {stage}: step {step + 1}/{budget.steps}, train loss {curve[-1][1]:.3f}")
    after = evaluate()
    log(f"pretraining {stage}: validation after: {after}")
    return Curve(stage, asdict(budget), curve, before, after, round(time.perf_counter() - start, 1))
