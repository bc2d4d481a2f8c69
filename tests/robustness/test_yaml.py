"""Task YAML that PyYAML would take wrongly or crash on, as users meet it: through the registry, one clear
error per file naming the file, the line and the fix. And `trust_remote_code` refused unless the run allows it.

(tests/test_yamlio.py checks tabs, duplicate keys and include cycles on read_yaml itself;
tests/adapters/test_generic.py::test_trust_remote_code_is_refused_unless_the_run_allows_it checks the adapter.)
"""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from spatialbench.cli import app
from spatialbench.errors import SpatialbenchError, ValidationErrors
from spatialbench.registry import TaskRegistry, builtin_dir, load_spec
from spatialbench.specs import TaskSpec

GOOD = "name: t\nkind: relation\ndataset:\n  source: synthetic\n  seed: 1\n"


def registry_error(folder: Path) -> SpatialbenchError:
    with pytest.raises(ValidationErrors) as e:
        TaskRegistry([folder]).check()  # loading alone leaves a bad file out
    assert len(e.value.errors) == 1
    return e.value.errors[0]


def write(tmp: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, line", [
    ("name: t\nkind: relation\ndataset:\n\tsource: synthetic\n", 4),  # a tab indents a block
    ("name: t\nkind: relation\ndataset: {source: synthetic}\nprobe:\n  epochs: 2\n\tlr: 0.1\n", 6),  # mixed
])
def test_tabs_name_the_file_and_line_and_say_how_to_fix(tmp_path, text, line):
    path = write(tmp_path, text)
    err = registry_error(tmp_path)
    assert err.file == str(path) and err.field.startswith(f"line {line},")
    assert err.fix == "YAML indents with spaces only: replace the tabs"
    assert len(str(err).splitlines()) == 2


def test_a_tab_inside_a_quoted_string_is_just_text(tmp_path):
    path = write(tmp_path, GOOD + 'description: "left\\tright"\n')
    assert load_spec(path, TaskSpec).description == "left\tright"


@pytest.mark.parametrize("text, key, line", [
    (GOOD + "kind: vsr\n", "kind", 6),
    ("name: t\nkind: relation\ndataset:\n  source: synthetic\n  seed: 1\n  seed: 2\n", "seed", 6),  # nested
    (GOOD + "probe: {epochs: 2, lr: 0.1, epochs: 3}\n", "epochs", 6),  # flow style
])
def test_duplicate_keys_name_the_file_key_and_line(tmp_path, text, key, line):
    path = write(tmp_path, text)
    err = registry_error(tmp_path)
    assert err.file == str(path) and err.field.startswith(f"line {line},")
    assert f"duplicate key '{key}'" in err.message


def test_a_duplicate_key_in_an_included_base_names_the_base(tmp_path):
    base = write(tmp_path, "kind: relation\nkind: vsr\n", "_base.yaml")
    write(tmp_path, "include: _base.yaml\nname: t\ndataset: {source: synthetic}\n")
    err = registry_error(tmp_path)
    assert err.file == str(base.resolve()) and "duplicate key 'kind'" in err.message


def test_merge_keys_work_and_may_be_overridden_but_not_repeated(tmp_path):
    """`<<:` merges are ordinary YAML: merged keys are defaults, an explicit key wins; that is no duplicate."""
    path = write(tmp_path, "name: t\nkind: relation\ndataset:\n  <<: {source: synthetic, seed: 4, image_size: 64}\n"
                           "  seed: 9\nprobe: &p {epochs: 3}\n")
    spec = load_spec(path, TaskSpec)
    assert (spec.dataset.seed, spec.dataset.image_size) == (9, 64)
    path.write_text("dataset:\n  <<: {source: synthetic}\n  seed: 9\n  seed: 10\nname: t\nkind: relation\n")
    with pytest.raises(SpatialbenchError, match="duplicate key 'seed'"):
        load_spec(path, TaskSpec)


@pytest.mark.parametrize("text, words", [
    ("? [a, b]\n: 1\n" + GOOD, "found unhashable key"),  # a list as a key: was a TypeError traceback
    (GOOD + "description: 2020-13-45\n", "month must be in 1..12"),  # date-like: was a ValueError
    (GOOD + "version: !!int twelve\n", "invalid literal for int()"),
    (GOOD + "probe: {lr: !!float fast}\n", "could not convert string to float"),
    (GOOD + "tags: [!!bool 1]\n", "cannot read the value '1' as bool"),  # was a KeyError
    (GOOD + "description: !!timestamp soon\n", "cannot read the value 'soon' as timestamp"),  # AttributeError
    (GOOD + "version: 1" + "0" * 5000 + "\n", "Exceeds the limit"),  # past Python's int digit limit
    (GOOD + "tags: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),  # was a RecursionError
    (GOOD + "description: !!python/object/apply:os.system [echo pwned]\n", "could not determine a constructor"),
    ("include: " + "x" * 300 + ".yaml\n" + GOOD, "included file not found"),  # was OSError: name too long
    ("\x00name: t\n", "invalid YAML"),
    ("", "expected a mapping"),
])
def test_yaml_that_used_to_crash_or_mislead_is_a_clear_error(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SpatialbenchError) as e:
        load_spec(path, TaskSpec)
    assert words in str(e.value) and str(path) in str(e.value)
    assert len(str(e.value).splitlines()) <= 3


def test_a_value_that_does_not_convert_names_its_line_and_how_to_quote_it(tmp_path):
    path = write(tmp_path, GOOD + "groups: [synthetic]\ntags:\n  - fine\n  - 2021-02-30\n")
    with pytest.raises(SpatialbenchError) as e:
        load_spec(path, TaskSpec)
    assert e.value.field == "line 9, column 5" and "day is out of range for month" in e.value.message
    assert "quote the value" in e.value.fix


def test_every_field_error_names_the_file_once_and_a_long_list_fits_a_screen(tmp_path):
    path = write(tmp_path, GOOD + "".join(f"unknown_{i}: {i}\n" for i in range(50)) + "version: '" + "9" * 500 + "x'\n")
    with pytest.raises(ValidationErrors) as e:
        load_spec(path, TaskSpec)
    assert len(e.value.errors) == 51
    lines = str(e.value).splitlines()
    assert len(lines) == 21 and lines[-1] == "... and 31 more error(s)"
    assert all(line.startswith(f"{path}: ") and line.count(str(path)) == 1 for line in lines[:-1])
    version = next(err for err in e.value.errors if err.field == "version")
    assert "9" * 61 not in str(version) and "..." in str(version)  # the 500-character value is shortened


def test_a_shipped_task_still_loads_after_these_rules():
    for path in sorted(builtin_dir("tasks").glob("[!_]*.yaml")):
        assert load_spec(path, TaskSpec).name == path.stem


# --- trust_remote_code -----------------------------------------------------------------------------------------


def test_trust_remote_code_is_refused_by_the_cli_unless_the_flag_is_given(tmp_path):
    """A card asking for the checkpoint's own Python code stops the run before anything is loaded or written."""
    card = yaml.safe_load((builtin_dir("models") / "generic-blip2-tiny.yaml").read_text())
    card["name"] = "remote-code-card"
    card["options"]["trust_remote_code"] = True
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(card))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--model", str(path), "--tasks", "synth_relation", "--seeds", "1",
                                      "--device", "cpu", "--output", str(out), "--baselines", "none", "--no-control",
                                      "--cache-dir", str(tmp_path / "cache")])
    text = " ".join((result.output + getattr(result, "stderr", "")).split())
    assert result.exit_code == 2, text
    assert "remote-code-card" in text and "options.trust_remote_code" in text and "--trust-remote-code" in text
    assert not list(out.rglob("*.json")) and not list(tmp_path.rglob("*.safetensors"))  # nothing loaded or written
