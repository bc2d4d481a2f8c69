"""Where a run computes and what its cache keeps, as its flags resolve."""

from spatialbench.run.devices import resolve_stored_dtype


def test_a_runs_stored_dtype_is_16_bit_unless_float32_is_asked_for():
    assert resolve_stored_dtype("auto", "float32", "cpu") == "bfloat16"
    assert resolve_stored_dtype("auto", "float16", "cpu") == "float16"  # the card's own 16 bits: no second rounding
    assert resolve_stored_dtype("auto", "bfloat16", "cpu") == "bfloat16"
    assert resolve_stored_dtype("float32", "float32", "cpu") == "float32"
    assert resolve_stored_dtype("float16", "float32", "cpu") == "float16"
