"""Run directories: bound to their spec, never created by a command that fails, and filesystem
faults (RUN missing, a file, under a file, read-only) end in one line.

Real CLI in a subprocess; the read-only case is a real read-only bind mount made in a private
mount namespace (`unshare -rm`), because tests run as root and root ignores permission bits.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import yaml

from conftest import REPO, TASK, cli
from test_fault_gate import locked_run, save_stage, spec_file, train_rows


def _edit(src, dest, **changes):
    raw = yaml.safe_load(src.read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        d = raw
        for k in path:
            d = d.setdefault(k, {})
        d[last] = value
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dest


def test_another_spec_on_an_existing_run_is_refused_then_rebound(probe, tmp_path):
    from curation.stages import generation_config
    from distilforge.manifest import Stage, read_manifest
    from distilforge.runctx import prepare
    from training.stages import train_stage

    a = spec_file(tmp_path)
    run = tmp_path / "run"
    spec, _ = locked_run(run, a)
    rows = datasets.Dataset.from_list(train_rows(spec))
    st = Stage(run / "generate", "generate", {}, generation_config(spec, run)).begin()
    st.save("rows", rows)
    st.finish(pending_shards=0)
    save_stage(run / "curate", "curate", curated=rows)
    first = train_stage(spec, run)
    recorded = (run / "spec.json").read_bytes()

    # the same file again, and a copy that differs only cosmetically: accepted silently
    r = cli("heldout", "lock", run, "--spec", a)
    assert r.returncode == 0 and "error" not in r.stderr, r.stderr[-2000:]
    cosmetic = _edit(a, tmp_path / "cosmetic.yaml", training__save_steps=7, generation__concurrency=1)
    r = cli("heldout", "lock", run, "--spec", cosmetic)
    assert r.returncode == 0, r.stderr[-2000:]
    r = cli("heldout", "lock", run, "--spec", a)  # back to the original file (records its path again)
    recorded = (run / "spec.json").read_bytes()

    b = _edit(a, tmp_path / "other.yaml", generation__per_label=3, training__epochs=2)
    for argv, name in (((("train", run, "--spec", b)), "train"), ((("eval", run, "--spec", b)), "eval"),
                       ((("heldout", "lock", run, "--spec", b)), "heldout lock"),
                       ((("curate", run, "--spec", b)), "curate")):
        p = probe(f"different spec on existing run: {name}")
        r = cli(*argv)
        line = p.one_line(r, rc=2, contains="this spec differs in: generation.per_label, training.epochs")
        assert f"was made with spec {a}" in line and "pass --respec to rebind (stages from generate on will rerun)" in line
        assert (run / "spec.json").read_bytes() == recorded
    # `run` always passes its spec: a different profile of the same file counts when content differs
    p = probe("different profile via run on existing run")
    r = cli("run", a, "--profile", "smoke", "--out", run)
    p.one_line(r, rc=2, contains="this spec differs in:")
    assert (run / "spec.json").read_bytes() == recorded and read_manifest(run / "train") == first

    # --respec: recorded; train reruns because its block changed, generate's fingerprint no longer matches
    r = cli("train", run, "--spec", b, "--respec")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "inputs unchanged" not in r.stderr
    rec = json.loads((run / "spec.json").read_text())
    assert rec["_source"] == str(b) and rec["generation"]["per_label"] == 3 and rec["training"]["epochs"] == 2
    again = read_manifest(run / "train")
    assert again["fingerprint"] != first["fingerprint"] and again["steps"] == 2 * first["steps"]
    new = prepare(run)
    assert not Stage(run / "generate", "generate", {}, generation_config(new, run)).is_current()
    assert Stage(run / "generate", "generate", {}, generation_config(spec, run)).is_current()
    r = cli("train", run, "--spec", b)  # bound now: the same spec passes silently and is skipped
    assert r.returncode == 0 and "inputs unchanged, skipped" in r.stderr, r.stderr[-2000:]


def test_train_config_overlay_keeps_the_binding(tmp_path):
    """`train --config` rewrites the training block of spec.json; the spec file still binds."""
    a = spec_file(tmp_path)
    run = tmp_path / "run"
    r = cli("heldout", "lock", run, "--spec", a)
    assert r.returncode == 0, r.stderr[-2000:]
    raw = json.loads((run / "spec.json").read_text())
    from distilforge.atomic import atomic_write_json

    # what `train --config` records (without training: the overlay is what is under test)
    atomic_write_json(run / "spec.json", {**raw, "training": {**raw["training"], "epochs": 5},
                                          "_spec_training": raw["training"], "_training_config": "t.yaml"})
    r = cli("heldout", "lock", run, "--spec", a)
    assert r.returncode == 0, r.stderr[-2000:]


MISSING = [("train",), ("eval",), ("heldout", "verify"), ("curate",), ("blindspots",), ("report",),
           ("decide",), ("review", "export")]


@pytest.mark.parametrize("argv", MISSING, ids=[" ".join(a) for a in MISSING])
def test_missing_run_is_refused_and_not_created(probe, tmp_path, argv):
    p = probe(f"missing RUN: {' '.join(argv)}")
    run = tmp_path / "nope" / "run"
    r = cli(*argv, run)
    p.one_line(r, rc=2, contains=f"{run}: no such run directory")
    assert not (tmp_path / "nope").exists()


def test_missing_run_with_a_spec_is_refused_for_a_reading_command(probe, tmp_path):
    p = probe("missing RUN with --spec: train")
    a = spec_file(tmp_path)
    r = cli("train", tmp_path / "run", "--spec", a)
    p.one_line(r, rc=2, contains="no such run directory")
    assert not (tmp_path / "run").exists()


def test_bad_spec_creates_nothing(probe, tmp_path):
    p = probe("heldout lock with an invalid spec")
    bad = _edit(spec_file(tmp_path), tmp_path / "bad.yaml", training__epochs=-1)
    r = cli("heldout", "lock", tmp_path / "run", "--spec", bad)
    p.one_line(r, rc=2, contains="training.epochs")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [("generate",), ("train",), ("heldout", "verify")], ids=lambda a: " ".join(a))
def test_spec_file_passed_as_run(probe, argv):
    p = probe(f"spec file passed as RUN: {' '.join(argv)}")
    before = TASK.read_bytes()
    r = cli(*argv, "examples/banking77/task.yaml")
    p.one_line(r, rc=2, contains="examples/banking77/task.yaml: is a file, not a run directory — did you mean --spec")
    assert TASK.read_bytes() == before


def test_run_under_a_regular_file(probe, tmp_path):
    a = spec_file(tmp_path)
    (tmp_path / "file").write_text("not a dir\n")
    p = probe("RUN under a regular file: heldout lock")
    r = cli("heldout", "lock", tmp_path / "file" / "run", "--spec", a)
    p.one_line(r, rc=2, contains=f"{tmp_path / 'file' / 'run'}: not a directory")
    p = probe("RUN under a regular file: train")
    r = cli("train", tmp_path / "file" / "run")
    p.one_line(r, rc=2, contains="no such run directory")
    assert (tmp_path / "file").read_text() == "not a dir\n"


def _readonly_cli(ro_dir, *args):
    """The CLI with `ro_dir` bind-mounted read-only in a private mount namespace (root-proof)."""
    inner = ('mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" && exec "$@"')
    cmd = ["unshare", "-rm", "sh", "-c", inner, str(ro_dir), sys.executable, "-m", "app.cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=600)


def _can_mount_readonly(tmp_path) -> bool:
    if not shutil.which("unshare"):
        return False
    d = tmp_path / "probe-ro"
    d.mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" '
                        '&& ! touch "$0/x" 2>/dev/null', str(d)], capture_output=True)
    return r.returncode == 0 and not (d / "x").exists()


def test_read_only_run(probe, tmp_path):
    a = spec_file(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    if not _can_mount_readonly(tmp_path):  # fall back on a read-only kernel filesystem
        p = probe("read-only RUN (/sys fallback): heldout lock")
        r = cli("heldout", "lock", "/sys/distilforge-run", "--spec", a)
        p.one_line(r, rc=1, contains="/sys/distilforge-run")
        return
    p = probe("read-only mount: heldout lock of a new RUN")
    r = _readonly_cli(ro, "heldout", "lock", ro / "run", "--spec", a)
    p.one_line(r, rc=1, contains=f"{ro / 'run'}: read-only file system")
    assert not (ro / "run").exists()
    # an existing run on a mount that turned read-only: reading works, the first write says so in one line
    r = cli("heldout", "lock", ro / "run", "--spec", a)
    assert r.returncode == 0, r.stderr[-2000:]
    before = {f: f.read_bytes() for f in (ro / "run").rglob("*") if f.is_file()}
    r = _readonly_cli(ro, "heldout", "verify", ro / "run")
    assert r.returncode == 0, r.stderr[-2000:]
    p = probe("read-only mount: heldout lock --force of an existing RUN")
    r = _readonly_cli(ro, "heldout", "lock", ro / "run", "--spec", a, "--force")
    p.one_line(r, rc=1, contains="read-only file system")
    assert {f: f.read_bytes() for f in (ro / "run").rglob("*") if f.is_file()} == before
