"""Adapter families: the built-in ones listed in families.py, third-party ones from the `spatialbench.adapters`
entry-point group."""

import textwrap

import pytest

from spatialbench.adapters import families
from spatialbench.adapters.blip2 import Blip2Adapter
from spatialbench.errors import SpatialbenchError


def _fake_distribution(root, module: str, body: str, entry: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(body))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[spatialbench.adapters]\n{entry}\n")


def test_a_third_party_family_arrives_through_its_entry_point(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "thirdparty_adapter", """
        from spatialbench.adapters.base import Adapter

        class ThirdParty(Adapter):
            pass
    """, "thirdparty = thirdparty_adapter:ThirdParty")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = families.get_family("thirdparty")
    assert found.__name__ == "ThirdParty" and found.family == "thirdparty"
    assert "blip2" in families.families()


def test_a_broken_entry_point_is_reported_when_asked_for_and_hides_nothing(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken_adapter", "raise ImportError('no such thing')\n",
                       "broken = broken_adapter:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "blip2" in families.installed() and "broken" not in families.installed()
    with pytest.raises(SpatialbenchError, match="broken_adapter:Nope") as e:
        families.get_family("broken")
    assert "failed to import" in str(e.value) and "no such thing" in str(e.value)


def test_the_builtin_families_are_listed_not_registered_on_import():
    """Each built-in family names itself; none is found by importing a module for its side effect."""
    assert {cls.family for cls in families.BUILTIN} == {"blip2", "generic", "idefics", "idefics2", "instructblip",
                                                        "kosmos2", "llava"}
    assert families.get_family("blip2") is Blip2Adapter


def test_a_family_added_in_a_test_is_found(monkeypatch):
    class Added(Blip2Adapter):
        family = "added"

    monkeypatch.setitem(families.ADDED, "added", Added)
    assert families.get_family("added") is Added
