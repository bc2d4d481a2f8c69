"""A fixed tiny run gives the results file recorded before the package was restructured (commit edf6a06).

Every condition, both regimes, the control tasks, MDL and every layer, over the four target kinds of the
fixture tasks in tests/fixtures/golden/tasks. Only timestamps, timings and provenance may differ; floats
agree to 1e-4 relative (BLAS reductions change the last bits with the thread count: measured 1e-7 between
one and two threads), everything else exactly. Recorded with:

    spatialbench run --model blip2-tiny --tasks golden_grid,golden_relation,golden_vsr,golden_region \
        --include-path tests/fixtures/golden/tasks --seeds 2 --regime both --baselines all --mdl \
        --layers all --device cpu --workers 0

(`--stored-dtype float32` is now passed too: the recording predates 16-bit storage, the default since.)
"""

import json
import math

from tests import helpers
from tests.helpers import VOLATILE
from tests.helpers.golden import GOLDEN

# Besides wall times and provenance: the checkpoint's digest and the tool's version (provenance too), and the
# card's `declares` (what `plan` sizes a run with: the card gained its layers after the recording), and the
# fields added after it: `stored_dtype` (float32 here, as the recording kept its features).
GOLDEN_VOLATILE = VOLATILE | {"checkpoint", "tool_version", "declares", "stored_dtype"}


def stable(value):
    return helpers.stable(value, GOLDEN_VOLATILE)


def differences(a, b, path="") -> list[str]:
    """Where two stable results differ: floats beyond 1e-4 relative, anything else at all."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool):
        same = math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
        return [] if same else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_the_fixed_tiny_run_gives_the_recorded_results(golden_run):
    recorded = json.loads((GOLDEN / "blip2-tiny.json").read_text())
    found = differences(stable(golden_run.result), stable(recorded))
    assert not found, f"{len(found)} difference(s) from the recorded run:\n" + "\n".join(found[:20])


def test_the_comparison_sees_a_changed_number():
    recorded = stable(json.loads((GOLDEN / "blip2-tiny.json").read_text()))
    changed = json.loads(json.dumps(recorded))
    metric = changed["tasks"]["golden_relation"]["conditions"]["joint"]["metrics"]["accuracy"]
    metric["mean"] += 1e-3
    assert differences(changed, recorded) == [
        f"/tasks/golden_relation/conditions/joint/metrics/accuracy/mean: {metric['mean']} != {metric['mean'] - 1e-3}"]
