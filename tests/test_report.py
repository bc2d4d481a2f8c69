"""The end-of-run table's formatting."""

from spatialbench.report import p_text, p_value


def test_a_p_value_below_the_bootstrap_resolution_is_shown_as_a_bound():
    assert p_text(1 / 2001) == "p<0.001"
    assert p_text(0.001) == "p=0.001"
    assert p_text(0.157) == "p=0.157"
    assert p_value(1 / 2001) == "<0.001" and p_value(0.5) == "0.500"
