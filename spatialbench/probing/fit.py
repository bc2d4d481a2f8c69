"""Fit one probe per seed and grid point under accelerate: train on train, early-stop on validation, score test."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..specs import ProbeSpec
from ..stats import metrics
from .heads import ProbeShape, box_loss, build_probe, to_box
from .visual import Visual


@dataclass
class Split:
    """One split as tensors; `image` indexes rows of ProbeInputs.features."""

    image: torch.Tensor  # [N] long
    query: torch.Tensor  # [N, S] category ids, or [N] rows of ProbeInputs.text
    target: torch.Tensor  # [N] long, or [N, 4] normalised boxes
    sizes: np.ndarray  # [N, 2] original (width, height): IoU is scored in pixels
    texts: list[str] | None = None  # query texts, for an encoder whose resampler reads them
    cluster: torch.Tensor | None = None  # [N] the item's image (rows differ per text where the resampler reads it)

    def __len__(self) -> int:
        return len(self.target)

    def subset(self, rows: np.ndarray) -> Split:
        return Split(self.image[rows], self.query[rows], self.target[rows], self.sizes[rows],
                     [self.texts[i] for i in rows.tolist()] if self.texts else None,
                     None if self.cluster is None else self.cluster[rows])

    def batches(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        """An epoch's batches: images in a random order, each image's items together (in a random order).

        Keeping an image's items in one batch puts a caption and its subject/object swap, which share the
        image and their words but not their label, into the same update: measured on synth_vsr's oracle,
        this is what lets the probe leave chance reliably."""
        cluster = self.image if self.cluster is None else self.cluster
        _, inverse = torch.unique(cluster, return_inverse=True)
        image_rank = torch.randperm(int(inverse.max()) + 1, generator=generator)[inverse]
        jitter = torch.rand(len(cluster), generator=generator)
        return torch.argsort(image_rank.double() + jitter.double()).split(batch_size)


class Texts:
    """The query texts' frozen LLM embeddings, looked up a batch at a time: rows of the distinct texts ->
    ([B, L, Dt] float32, mask [B, L]), each text's tokens first (right-padded, whatever side the tokenizer
    pads: a token's learned position is then the same in every batch) and L the batch's longest text.
    Embedded per batch (a task's whole table, 100k expressions x L tokens x the LLM's width, would not fit in
    RAM), or held as a table where it fits a budget (resident) or is small (tests)."""

    def __init__(self, lookup: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 embed: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 texts: list[str] | None = None):
        self.lookup, self.embed, self.texts = lookup, embed, texts
        self._resident: Texts | None = None

    def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lookup(rows)

    @classmethod
    def table(cls, embeddings: torch.Tensor, mask: torch.Tensor) -> Texts:
        def lookup(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            emb, keep = right_aligned(embeddings[rows], mask[rows])
            length = max(1, int(keep.sum(1).max())) if len(keep) else keep.shape[1]
            return emb[:, :length], keep[:, :length]
        return cls(lookup)

    @classmethod
    def embedded(cls, embed: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]], texts: list[str]) -> Texts:
        def lookup(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                emb, mask = embed([texts[i] for i in rows.tolist()])
            return right_aligned(emb.float(), mask)
        return cls(lookup, embed, texts)

    def resident(self, budget: int, chunk: int = 256) -> Texts:
        """Every text embedded once into a table, when its float32 bytes fit `budget`; else these Texts.
        Made once: every group of fits of the task reads the same texts."""
        if self.embed is None:
            return self
        if self._resident is None:
            self._resident = self._table(budget, chunk)
        return self._resident

    def release(self) -> None:
        """Forget the table resident() made (a process moving on to another task's fits)."""
        self._resident = None

    def _table(self, budget: int, chunk: int) -> Texts:
        parts, total = [], 0
        for i in range(0, len(self.texts), chunk):
            emb, mask = self.lookup(torch.arange(i, min(i + chunk, len(self.texts))))
            total += emb.numel() * 4
            if total > budget:
                return self
            parts.append((emb.cpu(), mask.cpu()))
        length = max(e.shape[1] for e, _ in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, length - t.shape[1]))  # noqa: E731
        return Texts.table(torch.cat([pad(e) for e, _ in parts]), torch.cat([pad(m) for _, m in parts]))


def right_aligned(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's kept tokens first, in order, then its padding ([B, L, Dt], [B, L])."""
    keep = mask.bool()
    if bool((keep[:, 1:] <= keep[:, :-1]).all()):  # right-padded already (most tokenizers): nothing to move
        return emb, mask
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    return torch.gather(emb, 1, order.unsqueeze(-1).expand_as(emb)), torch.gather(mask, 1, order)


@dataclass
class ProbeInputs:
    features: Visual  # [n_rows, Q, D] read a batch at a time, standardised with train statistics (a tensor is wrapped)
    splits: dict[str, Split]
    shape: ProbeShape
    box: bool
    text: Texts | torch.Tensor | None = None  # the distinct query texts (a tensor [n_texts, L, Dt] is wrapped)
    text_mask: torch.Tensor | None = None  # with a text tensor: its mask
    row_keys: list = field(default_factory=list)  # (image content key, text) of each feature row
    row_images: list[str] = field(default_factory=list)  # the task's image id of each feature row

    def __post_init__(self):
        if isinstance(self.features, torch.Tensor):
            self.features = Visual(self.features)
        if isinstance(self.text, torch.Tensor):
            self.text, self.text_mask = Texts.table(self.text, self.text_mask), None

    def with_features(self, features: Visual | torch.Tensor) -> ProbeInputs:
        """The same items over other visual features (a baseline, or vision features for the joint regime)."""
        features = Visual(features) if isinstance(features, torch.Tensor) else features
        return replace(self, features=features, shape=self.shape.with_prompt(*features.shape[1:]))

    def with_splits(self, splits: dict[str, Split]) -> ProbeInputs:
        return replace(self, splits=splits)

    def with_targets(self, targets: dict[str, torch.Tensor]) -> ProbeInputs:
        """The same items with other targets (a control task)."""
        return self.with_splits({name: replace(s, target=targets[name]) for name, s in self.splits.items()})


class Encoder(torch.nn.Module):
    """Maps stored visual rows to what the probe reads; trained with the probe in the joint regime."""

    def forward(self, rows: torch.Tensor, texts: list[str] | None) -> torch.Tensor:
        raise NotImplementedError

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        return decay_groups(self, lr, weight_decay)


@dataclass
class FitResult:
    seed: int
    test_pred: np.ndarray
    best_epoch: int
    epochs_run: int
    val_score: float
    seconds: float
    history: list[float] = field(default_factory=list)
    test_loss: float = float("nan")  # mean over the test split: cross-entropy in nats, or the box loss
    start: str | None = None  # joint regime: digest of the resampler weights the fit started from
    val_loss: float = float("nan")  # at the selected epoch: breaks validation-metric ties between grid points
    lr: float | None = None
    resampler_lr: float | None = None


def score(name: str, pred: np.ndarray, split: Split, box: bool) -> float:
    target = split.target.numpy()
    if box:
        return metrics.METRICS[name](metrics.denormalise(pred, split.sizes), metrics.denormalise(target, split.sizes))
    return metrics.METRICS[name](pred, target)


class _Batcher:
    def __init__(self, inputs: ProbeInputs, accelerator: Accelerator, encoder: Encoder | None = None):
        self.inputs, self.accelerator, self.device, self.encoder = inputs, accelerator, accelerator.device, encoder

    def __call__(self, split: Split, rows: torch.Tensor):
        rows = rows.cpu()
        visual = self.inputs.features.batch(split.image[rows], self.device)
        query = split.query[rows]
        mask = None
        if self.inputs.text is not None:
            query, mask = self.inputs.text(query)
            mask = mask.to(self.device)
        if self.encoder is not None:  # the probe's forward is autocast by accelerate; the encoder's is not
            with self.accelerator.autocast():
                visual = self.encoder(visual, [split.texts[i] for i in rows.tolist()] if split.texts else None)
        return visual, query.to(self.device), mask, split.target[rows].to(self.device)


def warmup_cosine(steps: int, warmup: float) -> Callable[[int], float]:
    """The lr factor at each step: linear warmup over the first `warmup` share of steps, then cosine to zero."""
    warm = max(1, round(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return factor


def decay_groups(modules: torch.nn.Module | list[torch.nn.Module], lr: float, weight_decay: float,
                 only: list[torch.nn.Parameter] | None = None) -> list[dict]:
    """Weight decay on the weight matrices of linear maps only: biases, norms, embeddings, positions and
    learned query tokens keep theirs (decaying them pulls tokens together, not towards a simpler map).
    `only`: the parameters to train (a resampler inside a larger model); default all of the modules'."""
    modules = [modules] if isinstance(modules, torch.nn.Module) else modules
    params = only if only is not None else [p for m in modules for p in m.parameters()]
    wanted = {id(p) for p in params}
    decayed: set[int] = set()
    for module in (m for root in modules for m in root.modules()):
        if isinstance(module, torch.nn.Linear):
            decayed.add(id(module.weight))
        elif isinstance(module, torch.nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(module, name, None) is not None:
                    decayed.add(id(getattr(module, name)))
    unique = list({id(p): p for p in params if id(p) in wanted}.values())
    return [{"params": [p for p in unique if id(p) in decayed], "lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in unique if id(p) not in decayed], "lr": lr, "weight_decay": 0.0}]


def _predict(model, inputs: ProbeInputs, split: Split, batch: _Batcher, loss_fn,
             batch_size: int) -> tuple[np.ndarray, float]:
    """Predictions for a split, and the mean loss over it, `batch_size` items at a time (as in training:
    what the probe needs, whatever the split's size)."""
    model.eval()
    if batch.encoder is not None:
        batch.encoder.eval()
    outs, total = [], 0.0
    with torch.no_grad():
        for rows in torch.arange(len(split)).split(batch_size):
            visual, query, mask, target = batch(split, rows)
            with batch.accelerator.autocast():
                raw = model(visual, query, mask).float()
            outs.append((to_box(raw) if inputs.box else raw.argmax(-1)).cpu())
            total += float(loss_fn(raw, target)) * len(rows)
    return torch.cat(outs).numpy(), total / max(len(split), 1)


def fit(
    inputs: ProbeInputs,
    spec: ProbeSpec,
    seed: int,
    headline: str,
    accelerator: Accelerator,
    on_epoch: Callable[[int, float], None] | None = None,
    encoder: Encoder | None = None,
    encoder_lr: float | None = None,
    lr: float | None = None,
    on_step: Callable[[list[float]], None] | None = None,
) -> FitResult:
    """Train one probe (and the encoder, if given); keep the best validation epoch; predict the test split.

    `lr` is one point of the spec's grid (default its first); the encoder trains at `encoder_lr` under the
    same optimiser, weight decay, warmup-cosine schedule and clipping. `on_step` sees every group's lr.

    The probe trains whole on this process's device. Under `accelerate launch` the run hands each
    process whole probes (cells) rather than splitting batches, so every fit computes exactly what a
    single-process run computes; accelerate supplies the device and mixed precision.
    """
    start = time.perf_counter()
    set_seed(seed)
    model = build_probe(inputs.shape, spec).to(accelerator.device)
    lr = spec.lr[0] if lr is None else lr
    groups = decay_groups(model, lr, spec.weight_decay)
    if encoder is not None:
        groups += encoder.param_groups(encoder_lr or lr, spec.weight_decay)
    groups = [g for g in groups if g["params"]]
    optimiser = torch.optim.AdamW(groups, foreach=True)  # one kernel per step for all tensors: the probes are many small ones
    train = inputs.splits["train"]
    steps = spec.epochs * math.ceil(len(train) / spec.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, warmup_cosine(steps, spec.warmup))
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=accelerator.mixed_precision == "fp16")
    trained = [p for g in groups for p in g["params"]]
    generator = torch.Generator().manual_seed(seed)
    batch = _Batcher(inputs, accelerator, encoder)
    loss_fn = (lambda raw, t: box_loss(to_box(raw), t)) if inputs.box else torch.nn.functional.cross_entropy

    # Select on the validation metric; its loss breaks ties (a metric flat at 0 must not pin epoch 1).
    best, best_epoch, best_state, history = (-np.inf, -np.inf), 0, None, []
    for epoch in range(1, spec.epochs + 1):
        model.train()
        if encoder is not None:
            encoder.train()
        for rows in train.batches(spec.batch_size, generator):
            visual, query, mask, target = batch(train, rows)
            with accelerator.autocast():
                loss = loss_fn(model(visual, query, mask).float(), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"seed {seed}: loss became {loss.item()} at epoch {epoch}; lower the lr")
            optimiser.zero_grad()
            scaler.scale(loss).backward()
            if spec.clip_grad_norm is not None:
                scaler.unscale_(optimiser)
                torch.nn.utils.clip_grad_norm_(trained, spec.clip_grad_norm)
            scaler.step(optimiser)
            scaler.update()
            if on_step:
                on_step([g["lr"] for g in optimiser.param_groups])
            schedule.step()
        pred, val_loss = _predict(model, inputs, inputs.splits["validation"], batch, loss_fn, spec.batch_size)
        val = score(headline, pred, inputs.splits["validation"], inputs.box)
        history.append(val)
        if on_epoch:
            on_epoch(epoch, val)
        if (val, -val_loss) > best:
            best, best_epoch = (val, -val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
            best_encoder = copy.deepcopy(encoder.state_dict()) if encoder is not None else None
        elif epoch - best_epoch >= spec.patience:
            break
    model.load_state_dict(best_state)
    if encoder is not None:
        encoder.load_state_dict(best_encoder)
    test_pred, test_loss = _predict(model, inputs, inputs.splits["test"], batch, loss_fn, spec.batch_size)
    return FitResult(seed, test_pred, best_epoch, len(history), float(best[0]), time.perf_counter() - start, history,
                     test_loss, val_loss=float(-best[1]), lr=lr, resampler_lr=encoder_lr if encoder is not None else None)
