"""Held-out sources that are not where the spec says: one line, rc 2, and a hint at the fix.

A user who clones the repo somewhere without ../shared/data meets the missing-file case on
`make demo`; it used to be an UnboundLocalError. Real CLI in a subprocess, real Banking77 rows
(from ../shared/data, read at run time into tmp_path), a hub id with the hub offline, and a
local dataset folder that `datasets.load_dataset` reads the way it reads a hub repo.
"""
from __future__ import annotations

import json
import time

import pandas as pd
import yaml

from conftest import BANKING77, TASK, cli


def spec_with_source(tmp_path, source: str):
    raw = yaml.safe_load(TASK.read_text())
    raw["heldout"]["source"] = source
    p = tmp_path / "task.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_missing_heldout_file_names_the_data_folder(probe, tmp_path):
    p = probe("held-out file missing")
    spec = spec_with_source(tmp_path, str(tmp_path / "elsewhere" / "banking77" / "test.csv"))
    r = cli("heldout", "lock", tmp_path / "run", "--spec", spec, "--profile", "smoke")
    line = p.one_line(r, rc=2, contains="DISTILFORGE_DATA")
    assert "no such file" in line and str(tmp_path / "elsewhere") in line
    assert not (tmp_path / "run" / "heldout" / "lock.json").exists()


def test_hub_id_while_offline_says_how_to_go_online(probe, tmp_path):
    p = probe("held-out hub id, hub offline")
    spec = spec_with_source(tmp_path, "distilforge-test/no-such-heldout:test")
    r = cli("heldout", "lock", tmp_path / "run", "--spec", spec, "--profile", "smoke", env={"HF_HUB_OFFLINE": "1"})
    line = p.one_line(r, rc=2, contains="offline")
    assert "HF_HUB_OFFLINE=0" in line and "distilforge-test/no-such-heldout" in line


def test_hub_style_dataset_folder_locks_and_verifies(probe, tmp_path):
    probe("held-out as a local dataset folder")  # expects no error
    folder = tmp_path / "banking77-hub"
    folder.mkdir()
    df = pd.read_csv(BANKING77 / "test.csv", dtype=str, keep_default_na=False)
    df.to_json(folder / "test.jsonl", orient="records", lines=True, force_ascii=False)
    run = tmp_path / "run"
    r = cli("heldout", "lock", run, "--spec", spec_with_source(tmp_path, str(folder)), "--profile", "smoke")
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((run / "heldout" / "lock.json").read_text())
    assert info["n"] == 2 * len(info["labels"]) and info["source"] == str(folder)  # smoke: 2 a label
    r = cli("heldout", "verify", run)
    assert r.returncode == 0 and f"ok: {info['n']} rows" in r.stdout, r.stderr[-2000:]


def test_demo_run_without_the_data_folder_stops_before_the_teacher(probe, tmp_path):
    p = probe("run with DISTILFORGE_DATA empty")
    empty = tmp_path / "no-data"
    empty.mkdir()
    run = tmp_path / "run"
    t0 = time.time()
    r = cli("run", TASK, "--profile", "smoke", "--out", run, env={"DISTILFORGE_DATA": str(empty)}, timeout=300)
    took = time.time() - t0
    line = p.one_line(r, rc=2, contains="DISTILFORGE_DATA")
    assert str(empty / "banking77" / "test.csv") in line
    assert not (run / "generate").exists() and "teacher" not in r.stderr.lower()
    assert took < 120, f"the missing held-out set was reported only after {took:.0f} s"
