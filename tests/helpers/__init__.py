"""What several test modules share: the annotation files the tests read, small task YAMLs.

Test modules import from here, never from each other or from a conftest.
"""

from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"  # real annotation files (their README: source, licence)


SMALL_TASKS = {
    "small_region": ("region_localization", {}, "mlp"),
    "small_grid": ("region_localization", {"grid": 3}, "linear"),
    "small_relation": ("relation", {}, "mlp"),
    "small_vsr": ("vsr", {}, "attentive"),
    "small_grounding": ("grounding", {}, "attentive"),
}


def write_small_tasks(root: Path) -> Path:
    """Task YAMLs over a few small scenes, one per kind, in group `small`: seconds, not minutes."""
    import yaml

    root.mkdir(parents=True)
    for name, (kind, extra, arch) in SMALL_TASKS.items():
        spec = {
            "name": name, "kind": kind, "groups": ["small"],
            "dataset": {"source": "synthetic", "seed": 3, "image_size": 64,
                        "sizes": {"train": 40, "validation": 12, "test": 20}, **extra},
            # One lr, not a grid: these tasks test the machinery, and a grid multiplies every fit.
            "probe": {"architecture": arch, "width": 16, "depth": 1, "heads": 2, "epochs": 3, "patience": 2, "lr": 1e-3},
        }
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return root


# What legitimately differs between two runs of the same code and data: wall times and provenance.
VOLATILE = frozenset({"seconds", "timings", "created_at", "command", "extraction", "git_hash", "git_hash_source",
                      "device"})


def stable(value, volatile=VOLATILE):
    """A results dict (as JSON) without the `volatile` keys, at any depth."""
    if isinstance(value, dict):
        return {k: stable(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [stable(v, volatile) for v in value]
    return value
