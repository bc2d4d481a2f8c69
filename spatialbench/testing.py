"""The conformance check every adapter must pass; reusable from a third-party package's own tests.

    from spatialbench.testing import assert_conformant
    def test_my_adapter():
        assert_conformant("my-model-tiny")          # a card name, a card YAML path, or a ModelCard

`spatialbench check-adapter NAME` runs the same checks and prints the table (spatialbench/conformance).
"""

from .conformance.checks import Check, assert_conformant, probe_images, run_checks

__all__ = ["Check", "assert_conformant", "probe_images", "run_checks"]
