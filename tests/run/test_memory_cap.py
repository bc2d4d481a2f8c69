"""A run whose features are larger than the memory it is allowed finishes: nothing holds a task's features.

The run goes in a subprocess under RLIMIT_DATA (the kernel's cap on a process's private writable memory:
heap and anonymous maps, so every tensor; not the page cache the feature shards are read through). The
process first runs the same task at a tenth of the size, so imports, allocator pools and lazy state
exist before the cap is set; the cap then leaves CAP_MB above what that warm-up holds. The features of
the capped run (prompts and vision features, fp32) are about 2.7 times CAP_MB.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

CAP_MB = 150  # headroom over the warm-up: at 100 a run once failed an 8 MB allocation (garbage not yet collected)
SCRIPT = textwrap.dedent('''
    import json, resource, sys
    import torch
    from spatialbench.adapters.families import ADDED
    from spatialbench.run.runner import Runner
    from spatialbench.specs import RunConfig
    from tests.helpers.counting import CountingAdapter

    Q, D = 64, 2048  # 512 KB a row in fp32

    class Wide(CountingAdapter):
        family = "wide"
        def preprocess(self, images):
            return super().preprocess(images)[:, None, :].repeat(1, Q, D // 3 + 1)[:, :, :D].contiguous()
        def vision_features(self, pixel_values):
            return pixel_values
        def shape_at(self, point):
            return (Q, D)

    ADDED["wide"] = Wide
    torch.set_num_threads(1)
    card, tasks, cache, out, cap_mb = sys.argv[1:6]
    def run(task, output):
        config = RunConfig(model=card, tasks=[task], seeds=1, device="cpu", include_paths=[tasks], cache_dir=cache,
                           output=output, baselines=["blind", "vision_patches"], control=False, workers=0,
                           batch_size=16)
        return Runner(config).run()
    warm = run("cap_small", out + "/warm")
    assert warm.tasks["cap_small"].status == "ok", warm.tasks["cap_small"].error
    with open("/proc/self/status") as f:
        data_kb = next(int(line.split()[1]) for line in f if line.startswith("VmData:"))
    cap = data_kb * 1024 + int(cap_mb) * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
    result = run("cap_large", out + "/large")
    task = result.tasks["cap_large"]
    print(json.dumps({"status": task.status, "error": task.error, "n": task.n, "cap_mb": cap / 2**20,
                      "warm_data_mb": data_kb / 1024, "conditions": sorted(task.conditions)}))
''')


def test_a_task_whose_features_exceed_the_memory_cap_finishes(tmp_path, small_tasks):
    tasks = tmp_path / "cap-tasks"
    tasks.mkdir()
    base = yaml.safe_load((small_tasks / "small_grid.yaml").read_text())
    for name, scale in (("cap_small", 1), ("cap_large", 10)):
        spec = {**base, "name": name, "groups": ["cap"]}
        spec["dataset"] = {**base["dataset"], "sizes": {"train": 24 * scale, "validation": 8 * scale,
                                                        "test": 8 * scale}}
        spec["probe"] = {**base.get("probe", {}), "architecture": "linear", "epochs": 1, "patience": 1,
                         "batch_size": 16}  # the warm-up fills whole batches too
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    card = tmp_path / "wide.yaml"
    card.write_text(yaml.safe_dump({"name": "wide", "family": "wide", "checkpoint": "none"}))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(card), str(tasks), str(tmp_path / "cache"),
                           str(tmp_path / "out"), str(CAP_MB)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "HF_HUB_OFFLINE": "1",
                               "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == "ok", done.stderr[-4000:]
    rows = 40 * 10  # distinct images of cap_large
    features_mb = 2 * rows * 64 * 2048 * 4 / 2**20  # prompts and vision features
    assert features_mb > 2.5 * CAP_MB  # the features could never have been held under the cap
    assert report["conditions"] == ["blind", "frozen", "vision_patches"]
