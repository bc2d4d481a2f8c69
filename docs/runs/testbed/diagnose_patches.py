"""The diagnostic behind docs/methodology.md's "Why vision_patches stays at chance on synth_vsr".

Fits the shipped attentive probe (the task's spec, one lr, no early stopping) on dataset seed 0 and prints
the validation headline every 5 epochs, over one of these prompts of the same items:
  patches   the model's vision_patches (the card's vision encoder);
  perfect   per-patch labels from the annotations on the encoder's 8 x 8 grid: the words of the object
            whose box holds the patch centre, its box centre, and the patch's own position (background
            patches carry only their position): what an ideal dense encoder would give;
  oracle    the oracle prompt (one token per object);
  oracle64  the oracle padded with zero tokens to 64 (as many tokens as patches).
A variant may override probe fields: "perfect:lr=0.003+depth=3". Validation only; test is never looked at.

    python docs/runs/testbed/diagnose_patches.py MODEL VARIANTS EPOCHS TASK [INCLUDE_DIR]
    python docs/runs/testbed/diagnose_patches.py blip2-pretrained perfect,oracle64,oracle 25 synth_vsr
"""

import sys

import torch

from spatialbench.probing.fit import fit
from spatialbench.probing.inputs import build_inputs
from spatialbench.probing.oracle import oracle_features, vocabulary
from spatialbench.probing.visual import standardised as standardise
from spatialbench.run.runner import Runner
from spatialbench.specs import RunConfig

GRID = 8  # the testbed's and blip2-tiny's patch grid (64 px, patch 8)


def perfect(objects, row_images):
    words = {w: i for i, w in enumerate(vocabulary(objects))}
    out = torch.zeros(len(row_images), GRID * GRID, len(words) + 4)
    for r, image in enumerate(row_images):
        for gy in range(GRID):
            for gx in range(GRID):
                cx, cy = (gx + 0.5) / GRID, (gy + 0.5) / GRID
                token = out[r, gy * GRID + gx]
                token[len(words):len(words) + 2] = torch.tensor([cx, cy])
                for name, (x0, y0, x1, y1) in objects.get(image, ()):
                    if x0 <= cx <= x1 and y0 <= cy <= y1:
                        for w in name.split():
                            token[words[w]] = 1.0
                        token[len(words) + 2:] = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2])
    return out


class Diagnose(Runner):
    def _probe(self, task, data, store, vision, adapter, load_seconds, layers):
        inputs = build_inputs(task, data, store, adapter)
        train = inputs.splits["train"].image
        rows = inputs.row_images
        prompts = {
            "patches": lambda: inputs,
            "perfect": lambda: inputs.with_features(standardise(perfect(data.objects, rows), train)),
            "oracle": lambda: inputs.with_features(standardise(oracle_features(data.objects, rows), train)),
            "oracle64": lambda: inputs.with_features(standardise(torch.nn.functional.pad(
                oracle_features(data.objects, rows), (0, 0, 0, 64 - oracle_features(data.objects, rows).shape[1])), train)),
        }
        base = task.probe.model_copy(update={"patience": 10_000, "epochs": int(sys.argv[3]), "lr": [1e-3]})
        for variant in sys.argv[2].split(","):
            name, _, overrides = variant.partition(":")
            spec = base
            for item in filter(None, overrides.split("+")):
                key, value = item.split("=")
                old = getattr(spec, key)
                spec = spec.model_copy(update={key: [float(value)] if isinstance(old, list) else type(old)(float(value))})
            result = fit(prompts[name](), spec, 0, task.headline, self.accelerator, lr=spec.lr[0],
                         on_epoch=lambda e, v: e % 5 == 0 and print(variant, "epoch", e, "validation", round(v, 3), flush=True))
            print("RESULT", sys.argv[1], task.name, variant, "best validation", round(result.val_score, 3),
                  "at epoch", result.best_epoch, flush=True)
        raise SystemExit(0)


Diagnose(RunConfig(model=sys.argv[1], tasks=[sys.argv[4]], point="vision_patches", seeds=1, regime="frozen",
                   baselines=[], control=False, device="cpu", output="/tmp/spatialbench-diagnose",
                   include_paths=sys.argv[5:])).run()
