"""`spatialbench plan`: a run sized from the card and the annotations alone, and sized right."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spatialbench.adapters.base import check_declared
from spatialbench.cli import app
from spatialbench.adapters.families import get_family
from spatialbench.errors import SpatialbenchError
from spatialbench.registry import ModelRegistry, TaskRegistry
from tests.helpers import DATA
from tests.helpers.golden import ARGS

SPATIALBENCH = str(Path(sys.executable).parent / "spatialbench")
# The whole process's peak resident set of the child, as the kernel counts it.
MEASURE = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)")


def _env(**extra):
    return {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", "OMP_NUM_THREADS": "1", **extra}


def test_plan_for_blip2_on_every_task_prints_its_table_offline_before_any_download(tmp_path):
    hub, cache = tmp_path / "hub", tmp_path / "cache"
    done = subprocess.run([SPATIALBENCH, "plan", "--model", "blip2", "--tasks", "all", "--regime", "both"],
                          env=_env(HF_HUB_CACHE=str(hub), HF_HOME=str(hub), SPATIALBENCH_CACHE=str(cache)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    rows = {line.split()[0]: line.split() for line in lines if line and line.split()[0] in
            {"coco_region", "refcocog_umd", "vsr_random", "synth_vsr", "total"}}
    assert set(rows) == {"coco_region", "refcocog_umd", "vsr_random", "synth_vsr", "total"}
    assert rows["coco_region"][1] == "documented" and rows["synth_vsr"][1] == "synthetic"
    assert rows["refcocog_umd"][2] == "25,799"  # 21,899 + 1,300 + 2,600 images, as the task documents them
    # The store keeps an image once, whichever tasks read it: the COCO and VSR tasks share COCO 2017's 123,287
    # images, the RefCOCO family COCO train2014's 82,783, and the synthetic tasks their 2,400 scenes.
    assert rows["total"][1] == f"{123_287 + 82_783 + 2_400:,}"
    # Kept in bf16 (the default: 16-bit storage), the whole cache is about 150 GB; in float32 it was twice that.
    assert rows["total"][4] == "GB" and float(rows["total"][3]) <= 200, rows["total"]
    assert "in bfloat16" in done.stdout
    assert "weights 4.55 GB" in lines[0]  # 1.22e9 declared parameters in float32
    assert not hub.exists() and not cache.exists()  # nothing downloaded, built or extracted


def test_tasks_of_one_image_pool_share_at_most_its_images_and_a_pool_has_one_size():
    from spatialbench.run.plan import TaskPlan, _documented
    from spatialbench.specs import ImagePool

    registry = TaskRegistry()
    pooled = lambda name, size: registry.get(name).model_copy(update={"image_pool": ImagePool(name="p", images=size)})
    unpooled = registry.get("vsr_zeroshot").model_copy(update={"image_pool": None})
    planned = [(pooled("refcoco_unc", 100), TaskPlan("a", "documented", images=70, prompts=70)),
               (pooled("refcocog_umd", 100), TaskPlan("b", "documented", images=60, prompts=60)),
               (unpooled, TaskPlan("c", "documented", images=5, prompts=5))]
    assert _documented(planned, "images") == 100 + 5
    assert _documented(planned[:1] + planned[2:], "images") == 70 + 5  # under the pool's size: the task's own
    planned[1][1].prompts = 90  # prompts that read the query text are one per (image, text): summed
    assert _documented(planned, "prompts") == 70 + 90 + 5
    with pytest.raises(SpatialbenchError, match="image pool 'p'") as e:
        _documented([planned[0], (pooled("refcocog_umd", 99), planned[1][1])], "images")
    assert e.value.field == "image_pool.images"


def test_plan_counts_a_real_dataset_where_it_is_on_disk(tmp_path):
    shared = DATA
    # Where the dataset is on disk (annotations and images: the loader reads each image's header), the plan
    # counts it; the images here are one small JPEG linked under every file name the annotations use.
    from PIL import Image

    one = tmp_path / "one.jpg"
    Image.new("RGB", (64, 48)).save(one)
    for split in ("train", "dev", "test"):
        for line in (shared / "vsr" / "splits" / "random" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            path = tmp_path / "coco" / row["image_link"].split("/")[-2] / row["image"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.symlink_to(one)
    done = subprocess.run([SPATIALBENCH, "plan", "--model", "blip2", "--tasks", "vsr_random", "--data-dir", str(shared),
                           "--coco-root", str(tmp_path / "coco"), "--json"], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    [task] = json.loads(done.stdout)["tasks"]
    # The VSR release's random split: 7,680 / 1,097 / 2,195 captions over 6,259 distinct COCO images.
    assert task["sizes"] == "annotations" and task["items"] == {"train": 7680, "validation": 1097, "test": 2195}
    assert task["images"] == 6259


def _tasks(root: Path) -> Path:
    root.mkdir()
    for name, kind, extra in (("tiny_grid", "region_localization", {"grid": 3}), ("tiny_vsr", "vsr", {})):
        spec = {"name": name, "kind": kind, "groups": ["tiny"],
                "dataset": {"source": "synthetic", "seed": 3, "image_size": 64,
                            "sizes": {"train": 40, "validation": 12, "test": 20}, **extra},
                "probe": {"width": 16, "depth": 1, "heads": 2, "epochs": 2, "patience": 2, "lr": 1e-3}}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return root


def test_a_tiny_runs_peak_ram_and_cache_bytes_are_within_a_quarter_of_its_plan(tmp_path):
    tasks = _tasks(tmp_path / "tasks")
    args = ["--model", "blip2-tiny", "--tasks", "tiny", "--include-path", str(tasks), "--seeds", "1",
            "--regime", "both", "--baselines", "blind,vision_patches"]
    # In its own process: the plan starts its peak from the resident set of the process it runs in.
    planned = subprocess.run([SPATIALBENCH, "plan", *args, "--json"], env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert planned.returncode == 0, planned.stderr
    totals = json.loads(planned.stdout)["totals"]
    cache = tmp_path / "cache"
    ran = subprocess.run([sys.executable, "-c", MEASURE, SPATIALBENCH, "run", *args, "--cache-dir", str(cache),
                          "--output", str(tmp_path / "out"), "--workers", "0"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    code, peak = ran.stdout.split()[-2:]
    assert code == "0", ran.stderr[-3000:]
    assert "plan: 2 task(s), 72 images" in ran.stderr  # run says the same first
    cache_bytes = sum(p.stat().st_size for p in (cache / "features").rglob("*") if p.is_file())
    assert 0.75 <= totals["cache_bytes"] / cache_bytes <= 1.25, (totals["cache_bytes"], cache_bytes)
    assert 0.75 <= totals["peak_bytes"] / int(peak) <= 1.25, (totals["peak_bytes"], int(peak))


# The pretrained testbeds take minutes to build; the demo's test loads blip2-pretrained through the runner,
# which refuses a wrong declared shape (check_declared).
@pytest.mark.parametrize("name", [n for n in ModelRegistry().names() if ModelRegistry().get(n).checkpoint.startswith("tiny:")
                                  and "pretrained" not in n])
def test_every_tiny_cards_declared_shapes_and_parameters_are_its_checkpoints(name):
    card = ModelRegistry().get(name)
    adapter = get_family(card.family).load(card)
    check_declared(adapter)  # raises on a wrong shape
    assert card.declares.extraction_parameters == sum(p.numel() for p in adapter.parameters())


def test_a_card_declaring_a_wrong_shape_is_refused_when_it_loads():
    card = ModelRegistry().get("blip2-tiny")
    wrong = card.model_copy(update={"declares": card.declares.model_copy(update={"shapes": {"projected": (8, 99)}})})
    adapter = get_family(card.family).load(wrong)
    with pytest.raises(SpatialbenchError, match=r"declares \[8, 99\] at projected; the checkpoint gives \[8, 48\]"):
        check_declared(adapter)


def test_plan_counts_every_fit_of_a_run_with_mdl_and_layers(golden_run):
    """The plan of the golden run's own command line (every condition, control tasks, MDL, every layer) counts
    the fits it made, task by task; `plan` takes the run's options as they are."""
    assert golden_run.fitted == len(list(golden_run.cells.rglob("*.npz")))
    planned = CliRunner().invoke(app, ["plan", *ARGS, "--json"])
    assert planned.exit_code == 0, planned.output
    tasks = {t["name"]: t["fits"] for t in json.loads(planned.stdout)["tasks"]}
    made = {t.name: len(list(t.glob("*.npz"))) for t in golden_run.cells.iterdir()}
    assert tasks == made and sum(made.values()) == golden_run.fitted
    mdl_cells = [p for p in golden_run.cells.rglob("*mdl*.npz")]
    layer_cells = [p for p in golden_run.cells.rglob("resampler.1*.npz")]
    assert len(mdl_cells) == 3 * 2 and layer_cells  # both regimes of the three classification tasks; layers too


def test_peak_ram_counts_the_features_a_stack_of_fits_holds_on_a_cpu_up_to_the_cap():
    from spatialbench.probing.visual import RESIDENT_BYTES
    from spatialbench.run.plan import estimate
    from spatialbench.specs import RunConfig

    card = ModelRegistry().get("blip2")
    task = TaskRegistry().get("synth_relation")

    def over(device, baselines):
        """The task's peak RAM beyond the process's own resident set and the weights, from one plan."""
        planned = estimate(RunConfig(model="blip2", tasks=[task.name], device=device, baselines=baselines), [task],
                           card)
        return planned.tasks[0].peak_bytes - planned.base_bytes - planned.weight_bytes, planned.tasks[0].prompts

    on_cpu, prompts = over("cpu", ["blind"])
    held = prompts * 32 * 2560 * 4  # every scene's float32 prompt: 0.77 GB, under the cap
    assert held < RESIDENT_BYTES and held <= on_cpu < held + 2**27  # and one batch or so beside them
    assert over("cuda", ["blind"])[0] < held  # on a GPU the stack's features are on the device
    # vision_patches' 257 x 1408 features of 2,400 scenes are 3.5 GB: held up to the cap, the rest streams
    # (beside a few batches of them in flight, 1.45 MB a row).
    assert RESIDENT_BYTES <= over("cpu", ["blind", "vision_patches"])[0] < RESIDENT_BYTES + 2**29
