"""The diagnostic behind docs/methodology.md's "Where the plateau is": which part of synth_vsr the attentive
probe cannot learn from 64 tokens, on a toy where the answer is plainly in the prompt.

Scenes of 2-5 objects (6 colours x 4 shapes, unique per scene) on an 8 x 8 patch grid, one or 2 x 2 patches
each with a free ring around them. A patch token is a fixed random map to 48 dims of [colour one-hot | shape
one-hot | patch centre], plus noise: what a perfect dense encoder would give. The query is the statement's
words ("the c1 s2 is left of the c4 s0") through a fixed random word table, as an LLM's frozen embeddings.
Three labels over the same pairs, each a harder step:
  half  is the first-named object in the right half?    one object found by its words, its place read
  rel   the relation of the first-named to the second   two objects found, their places compared (4 classes)
  vsr   is the statement true? (synth_vsr's minimal pairs: each pair as "A r B" true and "B r A" false)
Probes: `shipped` is spatialbench.probing.heads.AttentiveProbe, whose head reads the read-outs and the query
tokens after the blocks (each has cross-attended into the prompt), pooled keeping their order; `readouts`
is it as it was before that route (the head reads the read-outs alone); `ctx` is `readouts` with a
self-attention layer over the query tokens before the blocks. (The numbers docs/methodology.md gives for
`base` and `words` were measured at commit 9071af9, where `base` was `readouts` and `words` a first draft
of the route with its own gate table.) Validation accuracy per epoch; AdamW lr 1e-3,
weight decay 0.05, 5% warmup then cosine, clip 1, batch 64, torch seed 0.

    python docs/runs/probes/toy_binding.py MODE PROBES EPOCHS      e.g.  rel shipped,readouts,ctx 8
"""

import math
import random
import sys
import time

import torch
from torch import nn

from spatialbench.probing.heads import AttentiveProbe, ProbeShape
from spatialbench.specs import ProbeSpec

GRID, COLOURS, SHAPES, D, TEXT = 8, 6, 4, 48, 64
WORDS = ["the", "is", "of", "left", "right", "above", "below"] + [f"c{i}" for i in range(COLOURS)] + \
        [f"s{i}" for i in range(SHAPES)]
CONVERSE = (1, 0, 3, 2)
_g = torch.Generator().manual_seed(0)
TOKEN_MAP = torch.randn(COLOURS + SHAPES + 2, D, generator=_g)
WORD_TABLE = torch.randn(len(WORDS), TEXT, generator=_g)
LENGTH = 10


def scene(rng):
    objects, taken = [], set()
    for category in rng.sample(range(COLOURS * SHAPES), rng.randint(2, 5)):
        for _ in range(100):
            side = rng.randint(1, 2)
            x, y = rng.randint(0, GRID - side), rng.randint(0, GRID - side)
            cells = {(x + i, y + j) for i in range(side) for j in range(side)}
            if not {(a + da, b + db) for a, b in cells for da in (-1, 0, 1) for db in (-1, 0, 1)} & taken:
                taken |= cells
                objects.append((category, x, y, side))
                break
    return objects


def tokens(objects):
    raw = torch.zeros(GRID * GRID, COLOURS + SHAPES + 2)
    for i in range(GRID * GRID):
        raw[i, -2:] = torch.tensor([(i % GRID + 0.5) / GRID, (i // GRID + 0.5) / GRID])
    for category, x, y, side in objects:
        for i in range(side):
            for j in range(side):
                raw[(y + j) * GRID + x + i, category // SHAPES] = 1
                raw[(y + j) * GRID + x + i, COLOURS + category % SHAPES] = 1
    return raw @ TOKEN_MAP + 0.3 * torch.randn(GRID * GRID, D)


def relations(a, b):
    (_, ax, ay, asz), (_, bx, by, bsz) = a, b
    return [r for r, holds in enumerate((ax + asz <= bx, bx + bsz <= ax, ay + asz <= by, by + bsz <= ay)) if holds]


def statement(a, r, b, mode):
    name = lambda o: [f"c{o[0] // SHAPES}", f"s{o[0] % SHAPES}"]
    middle = ["of"] if mode == "rel" else [WORDS[3 + r]] + (["of"] if r < 2 else [])
    words = ["the", *name(a), "is", *middle, "the", *name(b)]
    return [WORDS.index(w) for w in words]


def items(n_scenes, seed, mode):
    rng, visual, query, keep, label = random.Random(seed), [], [], [], []
    for _ in range(n_scenes):
        objects = scene(rng)
        prompt = tokens(objects)
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                if not (rs := relations(a, b)):
                    continue
                r, first, second = rng.choice(rs), a, b
                if rng.random() < 0.5:
                    first, second, r = b, a, CONVERSE[r]
                pair = {"half": [(first, r, second, int(first[1] >= GRID // 2)), (second, r, first, int(second[1] >= GRID // 2))],
                        "rel": [(first, r, second, r), (second, CONVERSE[r], first, CONVERSE[r])],
                        "vsr": [(first, r, second, 1), (second, r, first, 0)]}[mode]
                for x, rel, y, target in pair:
                    ids = statement(x, rel, y, mode)
                    visual.append(prompt)
                    query.append(ids + [0] * (LENGTH - len(ids)))
                    keep.append([1] * len(ids) + [0] * (LENGTH - len(ids)))
                    label.append(target)
    return torch.stack(visual), WORD_TABLE[torch.tensor(query)], torch.tensor(keep), torch.tensor(label)


class ReadoutsOnly(AttentiveProbe):
    """The shipped probe before the query tokens' route to the head: the head reads the read-outs alone."""

    def __init__(self, shape, spec):
        super().__init__(shape, spec)
        w, k = spec.width, spec.readouts
        self.head = nn.Sequential(nn.Linear(k * w, 4 * w), nn.GELU(), nn.Linear(4 * w, shape.n_out))

    def forward(self, visual, query, mask):
        memory, (q, q_keep) = self.visual(visual), self.query(query, mask)
        q = self.contextual(q, q_keep)
        b, k = visual.shape[0], self.readouts.shape[0]
        x = torch.cat([self.readouts.expand(b, -1, -1), q], 1)
        pad = torch.cat([torch.zeros(b, k, dtype=torch.bool), ~q_keep], 1)
        for block in self.blocks:
            x = block(x, pad, memory)
        return self.head(self.norm(x[:, :k]).flatten(1))

    def contextual(self, q, q_keep):
        return q


class Contextual(ReadoutsOnly):
    """ReadoutsOnly with a self-attention layer over the query tokens before the blocks."""

    def __init__(self, shape, spec):
        super().__init__(shape, spec)
        self.context = nn.TransformerEncoderLayer(spec.width, 4, 4 * spec.width, 0.0, activation="gelu",
                                                  batch_first=True, norm_first=True)

    def contextual(self, q, q_keep):
        return self.context(q, src_key_padding_mask=~q_keep)


PROBES = {"shipped": AttentiveProbe, "readouts": ReadoutsOnly, "ctx": Contextual}


def fit(probe, epochs, train, val, lr=1e-3, batch=64):
    optimiser = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=0.05)
    n = len(train[3])
    steps = epochs * math.ceil(n / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, s / (0.05 * steps)) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    best, start = 0.0, time.time()
    for epoch in range(epochs):
        probe.train()
        for i in torch.randperm(n).split(batch):
            loss = nn.functional.cross_entropy(probe(train[0][i], train[1][i], train[2][i]), train[3][i])
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
            optimiser.step()
            schedule.step()
        probe.eval()
        with torch.no_grad():
            accuracy = (probe(val[0], val[1], val[2]).argmax(1) == val[3]).float().mean().item()
        best = max(best, accuracy)
        print(f"  epoch {epoch} validation {accuracy:.3f} ({time.time() - start:.0f} s)", flush=True)
    return best


if __name__ == "__main__":
    mode, names, epochs = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    train, val = items(1500, 1, mode), items(300, 2, mode)
    shape = ProbeShape(n_tokens=GRID * GRID, dim=D, n_out=4 if mode == "rel" else 2, text_dim=TEXT)
    print(mode, "items", len(train[3]), len(val[3]))
    for name in names:
        torch.manual_seed(0)
        probe = PROBES[name](shape, ProbeSpec())
        print("RESULT", mode, name, "best validation", round(fit(probe, epochs, train, val), 3), flush=True)
