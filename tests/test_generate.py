"""Generation end to end against the real embedded teacher (tiny counts): all three task types,
kill -9 + resume equality, dry-run forecast accuracy, budget stop + continue."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import jsonschema
import pytest

from conftest import REPO, cli

EXAMPLES = REPO / "examples"

TINY = """\
name: tiny-cls
type: classification
instruction: Classify the customer's message into its intent.
labels:
  - {name: card_arrival, description: the customer's new card has not arrived yet}
  - {name: exchange_rate, description: the customer asks what exchange rate is used}
teacher: {model: qwen2.5-coder-0.5b, max_tokens: 80, temperature: 0.9}
generation: {per_label: 2, shard_size: 1, seed: 7, invalid_retries: 0,
             input_description: a bank customer writing to the support chat}
heldout: {source: ../shared/data/banking77/test.csv, label_column: category}
"""


def tiny_spec(tmp: Path, text: str = TINY) -> Path:
    p = tmp / "tiny.yaml"
    p.write_text(text)
    return p


def rows_of(run: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(run / "generate" / "rows"))


def manifest(run: Path) -> dict:
    return json.loads((run / "generate" / "manifest.json").read_text())


def shard_bytes(run: Path) -> dict[str, str]:
    d = run / "generate" / "shards"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.jsonl"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fast_teacher) -> Path:
    tmp = tmp_path_factory.mktemp("gen")
    run = tmp / "run"
    r = cli("generate", run, "--spec", tiny_spec(tmp))
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_classification_rows_are_trl_ready_and_accounted(uninterrupted):
    ds, m = rows_of(uninterrupted), manifest(uninterrupted)
    assert len(ds) == 4 and len(set(ds["id"])) == 4 and m["pending_shards"] == 0
    assert {"id", "label", "text", "prompt", "completion", "strategy", "attributes", "teacher_model", "prompt_tokens",
            "completion_tokens", "latency_s", "status", "error", "endpoint", "cost_usd"} <= set(ds.column_names)
    for r in ds:
        assert r["prompt"][0]["role"] == "system" and r["prompt"][1] == {"role": "user", "content": r["text"]}
        assert r["completion"] == [{"role": "assistant", "content": r["label"]}]
        assert r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["latency_s"] > 0
        assert r["endpoint"].startswith("http://127.0.0.1:") and r["teacher_model"] == "qwen2.5-coder-0.5b"
        assert r["strategy"] == "attributes" and (r["status"] == "ok") == (r["error"] == "")
        if r["status"] == "ok":
            assert r["text"].strip() and r["label"] in ("card_arrival", "exchange_rate")
    assert m["ok"] == sum(s == "ok" for s in ds["status"]) >= 1, ds["error"]  # not a pass when all failed
    assert m["ok"] + m["failed"] == 4 and m["cost_usd"] == 0.0
    assert m["tokens"] == {"prompt": sum(ds["prompt_tokens"]), "completion": sum(ds["completion_tokens"])}
    assert m["spent"]["tokens"] >= sum(m["tokens"].values())
    r = cli("generate", uninterrupted)  # nothing changed: skipped, no request
    assert r.returncode == 0 and "skipped" in r.stderr


def test_kill9_mid_run_then_resume_equals_uninterrupted(tmp_path, uninterrupted):
    run = tmp_path / "run"
    spec = tiny_spec(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "generate", str(run), "--spec", str(spec)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    shards = run / "generate" / "shards"
    deadline = time.time() + 400
    while time.time() < deadline and not (shards.exists() and any(shards.glob("*.jsonl"))):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: distilabel runs steps in child processes
    proc.wait()
    before = shard_bytes(run)
    assert 1 <= len(before) < 4, f"kill landed outside the run ({len(before)} shards committed)"
    r = cli("generate", run, "--spec", spec)
    assert r.returncode == 0, r.stderr[-3000:]
    ds, ref = rows_of(run), rows_of(uninterrupted)
    assert sorted(ds["id"]) == sorted(ref["id"]) and len(ds) == len(ref) == 4
    # texts too, at temperature 0.9: every request carries a seed of its own (gensteps.TimedOpenAILLM)
    # and the server reads prompts in fixed blocks, so a row does not depend on what was asked before
    assert sorted(zip(ds["id"], ds["text"], ds["status"])) == sorted(zip(ref["id"], ref["text"], ref["status"]))
    after = shard_bytes(run)
    assert {k: after[k] for k in before} == before  # committed shards were not redone
    ledger = [json.loads(x) for x in (run / "generate" / "ledger.jsonl").read_text().splitlines() if x.strip()]
    committed = [e["shard"] for e in ledger if e["committed"]]
    assert sorted(committed) == sorted(set(committed)) and len(committed) == 4  # each shard paid for once


def test_extraction_end_to_end_with_preferences(tmp_path, fast_teacher):
    run = tmp_path / "run"
    r = cli("generate", run, "--spec", EXAMPLES / "extraction" / "task.yaml", "--profile", "smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    from distilforge.spec import load_spec

    spec = load_spec(EXAMPLES / "extraction" / "task.yaml", "smoke")
    ds, m = rows_of(run), manifest(run)
    assert len(ds) == 2 and sorted(set(ds["strategy"])) == ["attributes", "fewshot"]
    ok = [row for row in ds if row["status"] == "ok"]
    assert ok, f"every row failed: {ds['error']}"  # the checks below must see at least one valid row
    for row in ds:
        if row["status"] == "ok":
            jsonschema.validate(json.loads(row["completion"][0]["content"]), spec.output_schema)
            assert row["label"] == "" and row["text"] and row["prompt"][1]["content"] == row["text"]
        else:
            assert row["error"]  # the validator's message is kept
    cands = [json.loads(x) for p in (run / "generate" / "shards").glob("p-*.jsonl") for x in p.read_text().splitlines()]
    assert len(cands) == 2  # candidates for max_rows=1 row, 2 each
    for c in cands:
        assert c["valid"] == (c["error"] == "") and (c["score"] == 0) == (not c["valid"])
        assert c["prompt_tokens"] > 0 and c["completion_tokens"] > 0
    prefs = datasets.load_from_disk(str(run / "generate" / "prefs"))
    assert m["prefs"]["pairs"] == len(prefs) >= 1
    for p in prefs:
        assert p["chosen"] != p["rejected"] and p["prompt"][0]["role"] == "system"
        if p["kind"] == "hard_negative":
            good, bad = json.loads(p["chosen"][0]["content"]), json.loads(p["rejected"][0]["content"])
            jsonschema.validate(bad, spec.output_schema)
            assert sum(good[k] != bad[k] for k in good) == 1


def test_instruction_end_to_end_with_evolution(tmp_path, fast_teacher):
    run = tmp_path / "run"
    r = cli("generate", run, "--spec", EXAMPLES / "instruction" / "task.yaml", "--profile", "smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    ds = rows_of(run)
    by = {row["strategy"]: row for row in ds}
    assert set(by) == {"attributes", "evolve"}
    assert by["evolve"]["parent_id"] == by["attributes"]["id"]
    assert "evolution" in json.loads(by["evolve"]["attributes"])
    assert any(row["status"] == "ok" for row in ds), ds["error"]  # the row checks below must run at least once
    for row in ds:
        if row["status"] == "ok":
            assert row["text"] and row["completion"][0]["content"].strip()
            assert row["prompt"][0]["content"].startswith("You are the support assistant")


def test_dry_run_forecast_then_budget_stop_and_continue(tmp_path, fast_teacher):
    run, spec = tmp_path / "run", tiny_spec(tmp_path)
    r = cli("generate", run, "--spec", spec, "--dry-run", "--calibrate", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    fc = json.loads((run / "generate" / "forecast.json").read_text())
    assert fc["total"]["requests"] == 4 and fc["calibration"]["requests"] == 2
    assert not (run / "generate" / "manifest.json").exists() and not (run / "generate" / "shards").exists()
    # a cap worth ~1.5 requests: stops cleanly at a shard boundary
    cap = int(fc["total"]["tokens"] / 4 * 1.5)
    r = cli("generate", run, "--max-tokens", cap)
    assert r.returncode == 0, r.stderr[-3000:]
    m = manifest(run)
    assert m["stopped_by"] == "max_tokens" and m["pending_shards"] > 0 and "rerun with a higher cap" in r.stderr
    assert 1 <= m["committed_shards"] < 4 and m["spent"]["tokens"] <= cap * 1.6
    before = shard_bytes(run)
    r = cli("generate", run, "--max-tokens", 100000)
    assert r.returncode == 0, r.stderr[-3000:]
    m = manifest(run)
    assert m["pending_shards"] == 0 and m["stopped_by"] is None and len(rows_of(run)) == 4
    assert {k: v for k, v in shard_bytes(run).items() if k in before} == before
    err = abs(fc["total"]["tokens"] - m["spent"]["tokens"]) / m["spent"]["tokens"]
    print(f"forecast {fc['total']['tokens']} tokens vs actual {m['spent']['tokens']}: {err:.0%} off")
    assert err <= 0.30


def test_replicas_share_the_requests_and_give_the_same_rows(tmp_path, uninterrupted, fast_teacher):
    """`teacher.replicas: 2`: a second single-thread server is started for the run, requests are
    spread over both, the rows (ids, labels, prompts, texts) are the ones a single server produces, and
    only the replica this run started is stopped afterwards."""
    from distilforge.teacher import status

    run = tmp_path / "run"
    spec = tiny_spec(tmp_path, TINY.replace("temperature: 0.9}", "temperature: 0.9, replicas: 2}"))
    r = cli("generate", run, "--spec", spec)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = rows_of(uninterrupted), rows_of(run)
    key = lambda ds: sorted(zip(ds["id"], ds["label"], [json.dumps(p) for p in ds["prompt"]], ds["text"]))  # noqa: E731
    assert key(two) == key(one)  # texts too: per-request seeds, whichever replica answered
    assert len(set(two["endpoint"])) == 2, two["endpoint"]  # both servers answered
    assert fast_teacher["base_url"] in set(two["endpoint"])  # the running one was reused, not restarted
    left = status("qwen2.5-coder-0.5b")
    assert [s["base_url"] for s in left] == [fast_teacher["base_url"]]  # the extra replica is gone
    assert manifest(run)["fingerprint"] == manifest(uninterrupted)["fingerprint"]  # replicas change speed, not rows


def test_teacher_cli_serves_lists_and_stops_replicas():
    """`teacher serve --replicas 2` starts two servers (status lists both); `teacher stop` ends both."""
    r = cli("teacher", "serve", "--model", "smollm2-135m", "--replicas", "2")
    try:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.count("http://127.0.0.1:") == 2
        st = [json.loads(line) for line in cli("teacher", "status").stdout.splitlines() if line.startswith("{")]
        mine = [s for s in st if s["model"] == "smollm2-135m"]
        assert sorted(s["replica"] for s in mine) == [0, 1] and all(s["healthy"] for s in mine)
        again = cli("teacher", "serve", "--model", "smollm2-135m", "--replicas", "2")
        assert again.returncode == 0 and again.stdout.startswith("running")  # reused, none started
    finally:
        stop = cli("teacher", "stop", "--model", "smollm2-135m")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    st = cli("teacher", "status").stdout
    assert "smollm2-135m" not in st


BATCHED = TINY.replace("per_label: 2, shard_size: 1, seed: 7, invalid_retries: 0",
                       "per_label: 4, shard_size: 4, seed: 7, invalid_retries: 1, inputs_per_request: 4")


def test_batched_requests_give_distinct_rows_exactly_once(tmp_path, fast_teacher):
    """`inputs_per_request: 4`: one request per 4 rows of a label; every row keeps the id the one-row
    plan gives it, rows of one request are different texts, the request's tokens are split over its
    rows, and a rerun asks nothing again (a lost shard is asked again and comes back the same)."""
    from curation.generation.generate import plan_all
    from distilforge.spec import load_spec

    assert BATCHED != TINY
    run, spec_path = tmp_path / "run", tiny_spec(tmp_path, BATCHED)
    r = cli("generate", run, "--spec", spec_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ds, m = rows_of(run), manifest(run)
    (tmp_path / "k1").mkdir()
    single = load_spec(tiny_spec(tmp_path / "k1", BATCHED.replace(", inputs_per_request: 4", "")))
    assert sorted(ds["id"]) == sorted(r["request_id"] for r in plan_all(single, tmp_path / "k1")[0])  # the k=1 ids
    assert len(ds) == 8 and len(set(ds["id"])) == 8 and m["pending_shards"] == 0
    assert m["planned_requests"] == 2 and m["planned_rows"] == 8 and m["spent"]["requests"] >= 2
    b = m["batches"]
    assert b["requests"] == 2 and len(b["near_duplicates_by_batch"]) == 2 and b["ok_rows"] == m["ok"] >= 4, ds["error"]
    assert b["near_duplicate_rows"] == sum(b["near_duplicates_by_batch"].values())
    base, _ = plan_all(load_spec(spec_path), run / "generate")
    batch_of = {r["request_id"]: r["batch_id"] for r in base}
    texts: dict[str, list[str]] = {}
    for row in ds:
        assert row["label"] in ("card_arrival", "exchange_rate") and (row["status"] == "ok") == (row["error"] == "")
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] >= 0 and row["latency_s"] > 0
        if row["status"] == "ok":
            texts.setdefault(batch_of[row["id"]], []).append(" ".join(row["text"].lower().split()))
    for t in texts.values():
        assert len(set(t)) == len(t), t  # no two rows of one request are the same text
    # every token the ledger paid for is on some row (split evenly, nothing lost or counted twice)
    assert m["spent"]["tokens"] == sum(ds["prompt_tokens"]) + sum(ds["completion_tokens"])
    ledger_lines = (run / "generate" / "ledger.jsonl").read_text()
    before = shard_bytes(run)
    assert len(before) == 2
    (run / "generate" / "manifest.json").unlink()  # generate runs again: every shard is committed
    r = cli("generate", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run / "generate" / "ledger.jsonl").read_text() == ledger_lines and shard_bytes(run) == before
    assert sorted(zip(rows_of(run)["id"], rows_of(run)["text"])) == sorted(zip(ds["id"], ds["text"]))
    lost = sorted((run / "generate" / "shards").glob("*.jsonl"))[0]
    lost.unlink()  # as if a kill -9 landed before this shard's commit
    (run / "generate" / "manifest.json").unlink()
    r = cli("generate", run)
    assert r.returncode == 0, r.stderr[-3000:]
    again = rows_of(run)  # asked again with the same per-request seed: the same rows
    assert sorted(zip(again["id"], again["text"], again["status"])) == sorted(zip(ds["id"], ds["text"], ds["status"]))
    assert shard_bytes(run).keys() == before.keys() and len(manifest(run)["batches"]["near_duplicates_by_batch"]) == 2


def test_batch_answers_parse_leniently_and_never_invent_rows():
    """The list parser on hand-written answers: fenced JSON with chatter, a short list, a list cut
    off at max_tokens, a non-list, extra items (ignored), items that are objects or empty."""
    from curation import formats
    from distilforge.spec import parse_spec
    import yaml

    spec = parse_spec(yaml.safe_load(TINY))
    ok = lambda got: [f["text"] if f else None for f, _ in got]  # noqa: E731
    got = formats.parse_batch(spec, '```json\n{"messages": ["where is  my card", "card not here"]}\n```\nHope it helps!', 2)
    assert ok(got) == ["where is my card", "card not here"] and [e for _, e in got] == ["", ""]
    got = formats.parse_batch(spec, '{"messages": ["a", "b"]}', 4)
    assert ok(got) == ["a", "b", None, None] and got[2][1] == "the teacher's list had 2 of 4 messages"
    got = formats.parse_batch(spec, '{"messages": ["a", "b", "c', 3, "length", 40)
    assert ok(got) == ["a", "b", None] and "cut off at max_tokens" in got[2][1]
    for raw, why in (('{"messages": "a"}', "'messages' is a str, not a list"), ("no json here", "not JSON"),
                     ('{"texts": ["a"]}', "JSON without a 'messages' list"), (None, "no output from teacher")):
        got = formats.parse_batch(spec, raw, 2)
        assert ok(got) == [None, None] and all(e.startswith(why) for _, e in got), got
    assert ok(formats.parse_batch(spec, '["a", "b", "c", "d", "e"]', 3)) == ["a", "b", "c"]  # extras ignored
    got = formats.parse_batch(spec, '{"messages": [{"message": "x"}, "", 7]}', 3)
    assert ok(got) == ["x", None, None] and got[1][1] == "message 2 of the list is empty or not a string"
