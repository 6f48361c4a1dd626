"""Reliability against a real fault-injecting proxy (tests/faultproxy.py) in front of the real teacher:
transport faults are retried with backoff honouring Retry-After; a shard whose request never
succeeds is left uncommitted and a rerun finishes it; garbage answers become failed rows with a
reason; the API key reaches the server but no file, log or message."""
from __future__ import annotations

import json

import pytest
from pathlib import Path

import datasets

from conftest import cli
from faultproxy import FaultProxy

FAKE_KEY = "sk-distilforge-FAKE-7f3c9a1e55d04b2b"
KEY_ENV = "DF_TEST_TEACHER_KEY"


def proxied_spec(tmp: Path, base_url: str, extra: str = "", per_label: int = 1, retries: int = 5,
                 timeout: int = 4, max_tokens: int = 40, temperature: float = 0.9) -> Path:
    # teacher_agreement off: these tests count and match generation requests one by one (the
    # agreement check's own requests and faults are tested in tests/test_agreement.py)
    p = tmp / "spec.yaml"
    p.write_text(f"""\
name: faults
type: classification
instruction: Classify the customer's message into its intent.
labels:
  - {{name: card_arrival, description: the customer's new card has not arrived yet}}
  - {{name: exchange_rate, description: the customer asks what exchange rate is used}}
teacher: {{endpoint: openai, base_url: "{base_url}", model: qwen2.5-coder-0.5b, api_key_env: {KEY_ENV},
          structured_output: llama_cpp, max_tokens: {max_tokens}, timeout_s: {timeout}, max_retries: {retries},
          temperature: {temperature},
          price_in_per_m: 1.0, price_out_per_m: 2.0}}
generation: {{per_label: {per_label}, shard_size: 1, seed: 3, invalid_retries: 0, teacher_agreement: false,
             input_description: a bank customer writing to the support chat{extra}}}
heldout: {{source: ../shared/data/banking77/test.csv, label_column: category}}
""")
    return p


def run_gen(run: Path, spec: Path | None = None):
    args = ["generate", run] + (["--spec", spec] if spec else [])
    return cli(*args, env={KEY_ENV: FAKE_KEY})


def rows(run: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(run / "generate" / "rows"))


def manifest(run: Path) -> dict:
    return json.loads((run / "generate" / "manifest.json").read_text())


def assert_key_nowhere(run: Path, *texts: str) -> None:
    for t in texts:
        assert FAKE_KEY not in t
    files = [p for p in run.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert FAKE_KEY.encode() not in p.read_bytes(), p


def test_transport_faults_are_retried_with_backoff_and_the_key_never_leaks(tmp_path, fast_teacher):
    rules = [{"fault": "429", "retry_after": 2}, {"fault": "drop"}, {"fault": "503"}, {"fault": "hang", "seconds": 8}]
    with FaultProxy(fast_teacher["base_url"], rules, expect_key=FAKE_KEY) as px:
        run = tmp_path / "run"
        r = run_gen(run, proxied_spec(tmp_path, px.base_url, max_tokens=120))  # whole answers: see below
        assert r.returncode == 0, r.stderr[-3000:]
        log = list(px.log)
    m = manifest(run)
    assert m["pending_shards"] == 0 and len(rows(run)) == 2  # every fault was retried through
    faults = [e["fault"] for e in log]
    assert faults[:4] == ["429", "drop", "503", "hang"] and faults[4:] == [None] * (len(log) - 4)
    assert len(log) == 6  # 4 faults + 2 real answers: bounded, no duplicate requests
    gaps = [b["t"] - a["t"] for a, b in zip(log, log[1:])]
    assert gaps[0] >= 1.9  # Retry-After: 2 honoured
    assert 0.3 <= gaps[1] and 0.5 <= gaps[2]  # exponential backoff with jitter (0.5 s·2^n, -25 %)
    assert gaps[3] >= 4  # the hang ended by the client's 4 s timeout, then retried
    assert all(e["key_ok"] for e in log)  # the key did reach the server...
    assert_key_nowhere(run, r.stdout, r.stderr)  # ...and nothing else
    assert m["cost_usd"] > 0 and all(c > 0 for c in rows(run)["cost_usd"])  # priced teacher


def test_exhausted_retries_leave_the_shard_pending_and_a_rerun_finishes_it(tmp_path, fast_teacher):
    with FaultProxy(fast_teacher["base_url"], [{"fault": "500", "times": 2}], expect_key=FAKE_KEY) as px:
        run = tmp_path / "run"
        # room for a whole answer: the one shard that gets through must give a usable row (a run
        # with no usable row fails, rc 1), and the 0.5B teacher sometimes writes past 40 tokens
        spec = proxied_spec(tmp_path, px.base_url, retries=1, max_tokens=120)
        r = run_gen(run, spec)
        assert r.returncode == 0, r.stderr[-3000:]
        m = manifest(run)
        assert m["pending_shards"] == 1 and "rerun to finish" in r.stderr
        ds = rows(run)  # the pending shard's row is there as a failed row with the HTTP status
        http = [e for e in ds["error"] if e and e.startswith("HTTP 500: injected 500 (after 1 retries)")]
        assert len(ds) == 2 and len(http) == 1 and "pending" in http[0]
        ledger = [json.loads(x) for x in (run / "generate" / "ledger.jsonl").read_text().splitlines()]
        assert [e["committed"] for e in ledger].count(False) == 1
        assert [list(e["errors"].values()) for e in ledger if not e["committed"]][0][0].startswith("HTTP 500")
        r2 = run_gen(run)
        assert r2.returncode == 0, r2.stderr[-3000:]
    from curation.generation.plan import plan_base
    from distilforge.runctx import prepare

    planned = {x["request_id"] for x in plan_base(prepare(run))}
    assert manifest(run)["pending_shards"] == 0 and set(rows(run)["id"]) == planned
    assert not any("HTTP 500" in (e or "") for e in rows(run)["error"])  # the rerun's answer replaced it (same id)
    assert_key_nowhere(run, r.stdout, r.stderr, r2.stdout, r2.stderr)


def test_garbage_answers_become_failed_rows_with_reasons(tmp_path, fast_teacher):
    gen, cand = "Reply as JSON", "Answer with exactly one of"
    rules = [{"match": gen, "fault": "notjson"}, {"match": gen, "fault": "empty"}, {"match": gen, "fault": "truncate"},
             {"match": cand, "fault": "replace", "value": "lost_wallet"}]
    extra = ",\n             preferences: {enabled: true, candidates: 2, max_rows: 1, hard_negatives: false}"
    with FaultProxy(fast_teacher["base_url"], rules, expect_key=FAKE_KEY) as px:
        run = tmp_path / "run"
        # temperature 0, max_tokens 120: the one genuine answer must be usable (three injected failures
        # + a fourth the 0.5B teacher rambled past its cap = no usable row = rc 1, seen at 0.9)
        r = run_gen(run, proxied_spec(tmp_path, px.base_url, extra=extra, per_label=2, timeout=60, max_tokens=120,
                                      temperature=0))
        assert r.returncode == 0, r.stderr[-3000:]
    ds, m = rows(run), manifest(run)
    errors = sorted(e for e in ds["error"] if e)
    assert len(ds) == 4 and m["failed"] == 3 and m["pending_shards"] == 0
    assert [any(w in e for e in errors) for w in ("not JSON", "empty output", "truncated at max_tokens")] == [True] * 3
    cands = [json.loads(x) for p in (run / "generate" / "shards").glob("p-*.jsonl") for x in p.read_text().splitlines()]
    assert len(cands) == 2
    bad = [c for c in cands if not c["valid"]]
    assert len(bad) >= 1 and any("wrong label" in c["error"] and c["score"] == 0 for c in bad)
    assert "judge_score" in ds.column_names  # classification: agreement of candidates with the row's label


def test_no_preference_pairs_is_an_empty_dataset_not_a_crash(tmp_path):
    """Every candidate invalid (or nothing judged) leaves no pair: an empty `prefs` with the pair
    columns, not datasets' "Keys mismatch" (seen when the 0.5B teacher's candidates all failed)."""
    from curation.generation.generate import ROW_FEATURES
    from curation.generation.judge import PAIR_FEATURES, collect_prefs
    from distilforge.teacher import Endpoint
    from distilforge.secrets import Secret
    from distilforge.spec import load_spec

    extra = ",\n             preferences: {enabled: true, candidates: 2, max_rows: 1, hard_negatives: true}"
    spec = load_spec(proxied_spec(tmp_path, "http://127.0.0.1:9/v1", extra=extra))
    rows = datasets.Dataset.from_dict({k: [] for k in ROW_FEATURES}, features=ROW_FEATURES)
    ep = Endpoint("http://127.0.0.1:9/v1", "m", Secret("none"), "openai")
    prefs, agree = collect_prefs(spec, ep, rows, tmp_path)
    assert len(prefs) == 0 and prefs.features == PAIR_FEATURES and agree == {}
