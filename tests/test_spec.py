"""A malformed task spec gets one error line naming the field; nothing is written."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import TASK, cli
from distilforge.spec import SpecError, expand_env, load_spec, parse_spec


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


def test_flat_curation_keys_of_older_specs_mean_the_same_blocks():
    """`curation:` is one block per step now; the flat keys of earlier specs still load, into the
    same fields, and a spec that sets both spellings of one field differently is refused."""
    from distilforge.spec import CURATION_FLAT, Curation

    flat = Curation.model_validate({"decontam_cosine": 0.9, "semantic_dedup": False, "max_per_label": 40,
                                    "embedding_model": "x", "embed_threads": 1})
    nested = Curation.model_validate({"decontamination": {"cosine": 0.9}, "dedup": {"semantic": False},
                                      "filters": {"max_per_label": 40}, "embeddings": {"model": "x", "threads": 1}})
    assert flat == nested and flat.decontamination.cosine == 0.9 and not flat.dedup.semantic
    assert Curation.model_validate({"dedup": {"exact": False}, "minhash_dedup": False}).dedup.exact is False
    for old, (block, name) in CURATION_FLAT.items():  # every old key lands on a real field
        assert name in type(getattr(Curation(), block)).model_fields, old
    with pytest.raises(ValueError, match="same setting"):
        Curation.model_validate({"decontam_cosine": 0.9, "decontamination": {"cosine": 0.95}})


def test_a_run_recorded_with_flat_curation_keys_is_the_same_spec(tmp_path):
    """A run dir bound by an earlier version (flat curation keys in spec.json) is not refused as
    a different spec when the same task is passed again."""
    import json

    from distilforge.runctx import prepare

    task = TASK
    run = tmp_path / "run"
    prepare(run, task, "smoke", create=True)
    rec = json.loads((run / "spec.json").read_text())
    cur = rec.pop("curation")
    rec["curation"] = {**cur["filters"], "decontam_cosine": cur["decontamination"]["cosine"]}
    (run / "spec.json").write_text(json.dumps(rec))
    prepare(run, task, "smoke")  # no RunDirError
    rec["curation"]["decontam_cosine"] = 0.5
    (run / "spec.json").write_text(json.dumps(rec))
    from distilforge.runctx import RunDirError

    with pytest.raises(RunDirError, match="curation.decontamination.cosine"):
        prepare(run, task, "smoke")


def test_one_setting_each_for_the_base_model_and_structured_output():
    """`training.base_model` is `student.base`, and generation's structured output is the teacher's
    (on or off): earlier spellings load into them, contradictions are refused."""
    raw = yaml.safe_load(TASK.read_text())
    old = {**raw, "training": {**raw.get("training", {}), "base_model": "tiny-random"},
           "student": {}, "generation": {**raw["generation"], "structured_output": "llama_cpp"}}
    old.pop("constrained", None)
    old["generation"].pop("constrained", None)
    spec = parse_spec(old)
    assert spec.student.base == "tiny-random" and "base_model" not in type(spec.training).model_fields
    assert spec.generation.constrained is True
    assert parse_spec({**old, "generation": {**old["generation"], "structured_output": "none"}}).generation.constrained is False
    with pytest.raises(SpecError, match="same setting"):
        parse_spec({**old, "student": {"base": "smollm2-135m"}})
    with pytest.raises(SpecError, match="same setting"):
        parse_spec({**old, "generation": {**old["generation"], "constrained": False}})


def test_traffic_block_validates(monkeypatch):
    """`traffic:` (real inputs the teacher labels): off by default, the demo's block loads with its
    profile numbers, the source expands like heldout.source, and gold-label settings need a label column."""
    raw = yaml.safe_load(TASK.read_text())
    assert parse_spec({k: v for k, v in raw.items() if k != "traffic"}).traffic is None
    smoke, demo = load_spec(TASK, "smoke").traffic, load_spec(TASK, "demo").traffic
    assert (smoke.max_rows, smoke.dev_rows, demo.max_rows, demo.dev_rows) == (6, 4, 300, 60)
    assert demo.label_column == "category" and demo.dev_labels == "teacher"
    assert demo.label_map == {"Refund_not_showing_up": "refund_not_showing_up"}
    monkeypatch.setenv("DISTILFORGE_DATA", "/data")
    assert load_spec(TASK).traffic.source == "/data/banking77/train.csv"
    no_gold = {"source": "t.csv", "text_column": "body"}
    assert parse_spec({**raw, "traffic": no_gold}).traffic.label_column is None
    for extra, field in (({"labels": ["card_arrival"]}, "labels"), ({"dev_labels": "gold"}, "dev_labels"),
                         ({"label_map": {"a": "b"}}, "label_map"), ({"max_rows": 0, "dev_rows": 0}, "max_rows"),
                         ({"dev_rows": -1}, "traffic.dev_rows"), ({"colour": 1}, "traffic.colour")):
        with pytest.raises(SpecError) as e:
            parse_spec({**raw, "traffic": {**no_gold, **extra}})
        assert "traffic" in str(e.value) and field in str(e.value) and "\n" not in str(e.value)


def test_a_bad_recorded_spec_names_the_field(tmp_path):
    """RUN/spec.json that no longer validates (a field changed under it) fails in one line naming
    the field and the way out, like a bad TASK.yaml."""
    import json

    from distilforge.layout import Run
    from distilforge.runctx import prepare

    run = tmp_path / "run"
    prepare(run, TASK, create=True)
    p = Run(run).spec_json
    raw = json.loads(p.read_text())
    raw["eval"]["teacher"] = "sometimes"
    p.write_text(json.dumps(raw))
    with pytest.raises(SpecError) as e:
        prepare(run)
    msg = str(e.value)
    assert "\n" not in msg and "not a valid recorded spec: field 'eval.teacher'" in msg and "--respec" in msg


# The README's list: commands that (re)record the spec take --spec/--profile/--respec; the rest read RUN's.
TAKES_SPEC = {"traffic", "generate", "curate", "train", "eval", "heldout lock", "review push", "review pull",
              "review export"}
READS_RUNS_SPEC = {"blindspots", "loop", "decide", "report", "export", "heldout verify"}


def test_every_run_command_is_in_the_readme_spec_list():
    """A new RUN command must say which it is (README 'Any command ... --spec'), and the options must match."""
    import typer.main

    from app.cli import app

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), cmd

    seen = {}
    for name, cmd in walk(typer.main.get_command(app), []):
        if "run" in [p.name for p in cmd.params if p.param_type_name == "argument"]:
            opts = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}
            seen[name] = {"--spec", "--profile", "--respec"} <= opts
    assert set(seen) == TAKES_SPEC | READS_RUNS_SPEC, set(seen) ^ (TAKES_SPEC | READS_RUNS_SPEC)
    assert {n for n, ok in seen.items() if ok} == TAKES_SPEC
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in TAKES_SPEC | READS_RUNS_SPEC:
        assert f"`{name}`" in readme or f"`{name.split()[0]} " in readme, name
