"""`spatialbench demo`: the embedded testbed on small copies of the grid and relation tasks, as one config."""

from __future__ import annotations

from pathlib import Path

from ..specs import RunConfig

DEMO_TASKS = "demo_region_grid,demo_relation"  # small copies of the two explicit tasks with the clearest floor
DEMO_TASK_DIR = Path(__file__).resolve().parents[1] / "demo_tasks"  # not built in: `--tasks all` never runs them
DEMO_BASELINES = ["blind", "oracle", "vision_patches", "joint_random"]
DEMO_READING = (
    "How to read it: blind is what the question alone gives and oracle a prompt holding every object's box; "
    "vision_patches probes the vision encoder before the Q-Former, frozen the pretrained Q-Former's prompt, joint "
    "that Q-Former trained with the probe, joint_random the same architecture trained from a random start. "
    "blip2-pretrained was pretrained to name the objects, never to say where: frozen near blind while "
    "vision_patches is far above means its prompt dropped where things are; joint above frozen would mean the "
    "resampler can keep it once trained for it, and joint against joint_random how much the pretrained start "
    "helps. "
    "The object-aware variant: spatialbench run --model blip2-pretrained-spatial --tasks demo --include-path {tasks}"
)


def demo_config(output: Path, seeds: int, command: str, task_dir: Path | None = None) -> RunConfig:
    """The demo's run: blip2-pretrained, both regimes, the floor, the ceiling and the two references."""
    return RunConfig(model="blip2-pretrained", tasks=[DEMO_TASKS], seeds=seeds, output=output, batch_size=64,
                     include_paths=[task_dir or DEMO_TASK_DIR], regime="both", baselines=DEMO_BASELINES,
                     control=False, command=command)
