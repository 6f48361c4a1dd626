"""A malformed task spec gets one error line naming the field; nothing is written."""
from __future__ import annotations

import pytest
import yaml

from conftest import TASK, cli
from distilforge.spec import SpecError, expand_env, load_spec


def _write(tmp_path, mutate):
    raw = yaml.safe_load(TASK.read_text())
    mutate(raw)
    p = tmp_path / "task.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["generation"].__setitem__("per_label", "many"), "generation.per_label"),
    (lambda r: r["generation"].__setitem__("per_label", 0), "generation.per_label"),
    (lambda r: r.pop("heldout"), "heldout"),
    (lambda r: r["teacher"].__setitem__("colour", "blue"), "teacher.colour"),
    (lambda r: r.__setitem__("labels", r["labels"] + [r["labels"][0]]), "labels"),
    (lambda r: r["labels"][3].pop("description"), "labels.3.description"),
    (lambda r: r["teacher"].update(endpoint="openai", base_url=None), "teacher"),
    (lambda r: r.__setitem__("type", "regression"), "type"),
])
def test_bad_field_is_named_in_one_line(tmp_path, mutate, field):
    p = _write(tmp_path, mutate)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert f"'{field}'" in str(e.value) and "\n" not in str(e.value)
    run = tmp_path / "run"
    r = cli("heldout", "lock", run, "--spec", p)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0] and lines[0].startswith("error:"), r.stderr
    assert not (run / "spec.json").exists() and not (run / "heldout").exists()


def test_invalid_yaml_names_the_line(tmp_path):
    p = tmp_path / "task.yaml"
    p.write_text("name: x\nlabels: [a, b\ninstruction: y\n")
    with pytest.raises(SpecError, match=r"line \d+"):
        load_spec(p)


def test_unknown_profile(tmp_path):
    with pytest.raises(SpecError, match="profiles.nope"):
        load_spec(TASK, "nope")


def test_env_expansion(monkeypatch):
    monkeypatch.delenv("DF_TEST_DIR", raising=False)
    assert expand_env("${DF_TEST_DIR:-/a}/b.csv") == "/a/b.csv"
    monkeypatch.setenv("DF_TEST_DIR", "/z")
    assert expand_env("${DF_TEST_DIR:-/a}/b.csv") == "/z/b.csv"
    monkeypatch.delenv("DF_TEST_DIR")
    with pytest.raises(SpecError, match="DF_TEST_DIR"):
        expand_env("${DF_TEST_DIR}/b.csv")


def test_profiles_merge_over_base():
    base, smoke = load_spec(TASK), load_spec(TASK, "smoke")
    assert base.student.base == "smollm2-135m" and smoke.student.base == "tiny-random"
    assert smoke.generation.seed == base.generation.seed  # untouched keys survive the merge
    assert smoke.label_names == base.label_names and len(base.label_names) == 10
