import pytest

from spatialbench.run.runner import Runner
from tests.helpers.golden import GoldenRun, golden_config


@pytest.fixture(scope="session")
def golden_run(tmp_path_factory) -> GoldenRun:
    config = golden_config(tmp_path_factory.mktemp("golden") / "out")
    runner = Runner(config)
    result = runner.run().model_dump(mode="json")
    return GoldenRun(config, result, runner.cells.fitted, runner.cells.root)
