"""Results directories made from the leaderboard's fixture run, with per-item scores of one's choosing."""

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "leaderboard" / "fixtures" / "blip2-tiny.json"


def samples(directory: Path, scores: list[float], images: int, condition="frozen", with_scores=True):
    """samples_tiny_relation.jsonl with one score per item, items spread evenly over `images` images."""
    lines = []
    for i, s in enumerate(scores):
        line = {"uid": f"u{i}", "image_id": f"img{i % images}", "accuracy": {"0": s, "1": s}}
        if with_scores:
            line["scores"] = {condition: s, "joint": 1.0 - s}
        lines.append(json.dumps(line))
    (directory / "samples_tiny_relation.jsonl").write_text("\n".join(lines) + "\n")


def run_dir(root: Path, name: str, scores, images=10, **kw) -> Path:
    d = root / name
    d.mkdir()
    shutil.copy(FIXTURE, d / "results.json")
    samples(d, scores, images, **kw)
    return d / "results.json"
