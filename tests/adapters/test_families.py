"""Adapter families come from the decorator and from the `spatialbench.adapters` entry-point group."""

import textwrap

import pytest

from spatialbench.adapters import base
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
    monkeypatch.setattr(base, "_FAMILIES", dict(base._FAMILIES))
    assert "thirdparty" not in base._FAMILIES
    found = base.get_family("thirdparty")
    assert found.__name__ == "ThirdParty" and found.family == "thirdparty"
    assert "blip2" in base.families()


def test_a_broken_entry_point_is_reported_when_asked_for_and_hides_nothing(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken_adapter", "raise ImportError('no such thing')\n",
                       "broken = broken_adapter:Nope")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_FAMILIES", dict(base._FAMILIES))
    monkeypatch.setattr(base, "_BROKEN", {})
    assert "blip2" in base.families() and "broken" not in base.families()
    with pytest.raises(SpatialbenchError, match="broken_adapter:Nope") as e:
        base.get_family("broken")
    assert "failed to import" in str(e.value) and "no such thing" in str(e.value)


def test_the_decorator_registers_and_names_a_family(monkeypatch):
    monkeypatch.setattr(base, "_FAMILIES", dict(base._FAMILIES))

    @base.register_family("decorated")
    class Decorated(base.Adapter):
        pass

    assert base.get_family("decorated") is Decorated and Decorated.family == "decorated"
