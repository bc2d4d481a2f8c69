import pytest

from spatialbench.errors import SpatialbenchError
from spatialbench.yamlio import read_with_includes, read_yaml


def test_duplicate_keys_are_refused_with_the_line(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("name: a\nkind: vsr\nname: b\n")
    with pytest.raises(SpatialbenchError) as e:
        read_yaml(f)
    assert "duplicate key 'name'" in str(e.value) and "line 3" in str(e.value) and str(f) in str(e.value)


def test_tabs_give_a_fix(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("name: a\ndataset:\n\tsource: synthetic\n")
    with pytest.raises(SpatialbenchError) as e:
        read_yaml(f)
    assert "spaces" in str(e.value) and str(f) in str(e.value)


def test_a_list_at_the_top_is_refused(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(SpatialbenchError, match="expected a mapping"):
        read_yaml(f)


def test_include_merges_nested_mappings_and_the_child_wins(tmp_path):
    (tmp_path / "_base.yaml").write_text("version: 2\ndataset: {source: synthetic, seed: 1, image_size: 64}\n")
    (tmp_path / "t.yaml").write_text("include: _base.yaml\nname: t\ndataset: {seed: 7}\n")
    data = read_with_includes(tmp_path / "t.yaml")
    assert data == {"version": 2, "name": "t", "dataset": {"source": "synthetic", "seed": 7, "image_size": 64}}


def test_include_cycle_and_missing_file_are_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(SpatialbenchError, match="include cycle"):
        read_with_includes(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(SpatialbenchError, match="included file not found") as e:
        read_with_includes(tmp_path / "c.yaml")
    assert e.value.field == "include"
