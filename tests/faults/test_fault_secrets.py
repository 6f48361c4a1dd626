"""A planted API key must never come back out: not on stdout/stderr, not in the run dir, not in the
report, not in Argilla records — on failing paths above all (that is where tracebacks, error
messages and retried requests tend to print what they hold).

The teacher is the real 0.5B llama.cpp server behind the real fault proxy (tests/faultproxy.py),
reached as a *remote* OpenAI-compatible endpoint with `api_key_env`, so the key really travels.
"""
from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import yaml

from conftest import BANKING77, TASK, cli
from faultproxy import FaultProxy

KEY = "sk-planted-0c1d2e3f4a5b6c7d8e9f"
KEY_ENV = "DF_PLANTED_KEY"


def remote_spec(tmp: Path, base_url: str, *, timeout: float = 20, retries: int = 1, per_label: int = 1,
                labels: int = 2, profile_spec: bool = False) -> Path:
    """The Banking77 example, its teacher swapped for a remote endpoint that needs the planted key."""
    raw = yaml.safe_load(TASK.read_text())
    raw["teacher"] = {"endpoint": "openai", "base_url": base_url, "model": "qwen2.5-coder-0.5b",
                      "api_key_env": KEY_ENV, "timeout_s": timeout, "max_retries": retries, "max_tokens": 48,
                      "structured_output": "llama_cpp",  # a llama.cpp server is behind the proxy
                      "price_in_per_m": 1.0, "price_out_per_m": 2.0}
    raw["heldout"]["source"] = str(BANKING77 / "test.csv")
    if not profile_spec:
        raw["labels"] = raw["labels"][:labels]
        raw["generation"] = {**raw.get("generation", {}), "per_label": per_label, "shard_size": 1,
                             "invalid_retries": 0}
        raw.pop("profiles", None)
    else:  # the smoke profile keeps its own teacher model/max_tokens; the endpoint stays remote
        raw["profiles"]["smoke"]["teacher"] = {"model": "qwen2.5-coder-0.5b", "max_tokens": 48}
    p = tmp / "remote.yaml"
    p.write_text(yaml.safe_dump(raw, sort_keys=False))
    return p


def test_secret_values_are_masked_in_reprs_logs_and_streams(capsys):
    import io

    from distilforge.teacher import Endpoint
    from distilforge.secrets import RedactingFilter, RedactingStream, Secret, redact

    s = Secret(KEY)
    ep = Endpoint("http://127.0.0.1:9/v1", "m", s, "openai")
    for shown in (repr(s), str(s), f"{s}", repr(ep), str(ep), str([ep]), str({"k": s})):
        assert KEY not in shown
    assert s.reveal() == KEY and pickle.loads(pickle.dumps(s)).reveal() == KEY
    assert redact(f"Bearer {KEY}") == "Bearer ****"
    # a key pasted with a trailing newline shows up escaped in httpx's header error
    Secret("sk-newline-key-123456\n")
    assert "sk-newline" not in redact("Illegal header value b'Bearer sk-newline-key-123456\\n'")
    # logging: in the message, in %-args, and in an exception's traceback
    buf = io.StringIO()
    h = logging.StreamHandler(buf)
    h.addFilter(RedactingFilter())
    log = logging.getLogger("df-secret-test")
    log.addHandler(h)
    log.propagate = False
    log.error("calling with %s", KEY)
    try:
        raise RuntimeError(f"bad key {KEY}")
    except RuntimeError:
        log.exception("failed")
    assert buf.getvalue().count("****") == 2 and KEY not in buf.getvalue()  # the %-arg and the exception
    out = io.StringIO()
    RedactingStream(out).write(f"x {KEY} y")
    assert out.getvalue() == "x **** y"


FAILING = {
    "closed port": dict(url="http://127.0.0.1:9/v1", rules=None),
    "HTTP 500 on every request": dict(rules=[{"fault": "500", "times": 1000}]),
    "garbage on every answer": dict(rules=[{"fault": "notjson", "times": 1000}]),
    "teacher hangs": dict(rules=[{"fault": "hang", "seconds": 4, "times": 1000}], timeout=1.5),
}


@pytest.mark.parametrize("case", list(FAILING))
def test_failing_teacher_never_prints_or_writes_the_key(case, probe, tmp_path, fast_teacher):
    cfg = FAILING[case]
    p = probe(f"secret: generate, {case}")
    with FaultProxy(fast_teacher["base_url"], cfg["rules"], expect_key=KEY) as px:
        spec = remote_spec(tmp_path, cfg.get("url") or px.base_url, timeout=cfg.get("timeout", 20), retries=0)
        run = tmp_path / "run"
        r = cli("generate", run, "--spec", spec, env={KEY_ENV: KEY}, timeout=600)
        r_debug = cli("generate", run, env={KEY_ENV: KEY, "DISTILFORGE_DEBUG": "1"}, timeout=600)
        if cfg["rules"]:  # the key did travel: the server saw it on every request
            assert px.log and all(e["key_ok"] for e in px.log)
    # every request failed: the command fails, and says so in one line
    p.one_line(r, rc=1)
    assert r_debug.returncode == 1
    p.no_secret(KEY, r, r_debug, run, Path.home() / ".cache" / "distilforge" / "last-error.txt")


def test_key_with_a_trailing_newline_is_not_echoed(probe, tmp_path, fast_teacher):
    """httpx refuses a header value with a newline and quotes the value in its error message."""
    p = probe("secret: key pasted with a newline")
    with FaultProxy(fast_teacher["base_url"], None) as px:
        spec = remote_spec(tmp_path, px.base_url, retries=0)
        run = tmp_path / "run"
        r = cli("generate", run, "--spec", spec, env={KEY_ENV: KEY + "\n"}, timeout=600)
        r_dry = cli("generate", run, "--dry-run", "--calibrate", "1", env={KEY_ENV: KEY + "\n"}, timeout=600)
    p.one_line(r, rc=1)
    p.one_line(r_dry, rc=1)
    p.no_secret(KEY, r, r_dry, run)


def test_remote_run_with_faults_leaves_no_key_in_run_report_or_argilla(probe, tmp_path, fast_teacher,
                                                                       tmp_path_factory):
    """The whole chain (smoke profile) against a remote teacher that fails now and then, then the
    review push: the key stays out of every file, the report and the Argilla records."""
    from conftest_argilla import shared_server, stop_shared_server

    p = probe("secret: full run with faults + report + review push")
    rules = [{"fault": "500", "times": 2}, {"fault": "drop"}, {"fault": "notjson"}]
    with FaultProxy(fast_teacher["base_url"], rules, expect_key=KEY) as px:
        spec = remote_spec(tmp_path, px.base_url, retries=3, profile_spec=True)
        run = tmp_path / "run"
        r = cli("run", spec, "--profile", "smoke", "--out", run, env={KEY_ENV: KEY}, timeout=1500)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sum(e["key_ok"] for e in px.log) == len(px.log) > 4  # every request carried the key
    m = json.loads((run / "generate" / "manifest.json").read_text())
    assert m["teacher"]["kind"] == "openai" and m["requests"] >= 1
    report = run / "report.html"
    assert report.stat().st_size > 1000
    server = shared_server(tmp_path_factory)
    try:
        env = {"ARGILLA_API_URL": server.url, "ARGILLA_API_KEY": server.api_key, KEY_ENV: KEY}
        push = cli("review", "push", run, env=env, timeout=600)
        assert push.returncode == 0, push.stderr[-3000:]
        with server.http() as h:
            ds = [d for d in h.get("/me/datasets").json()["items"]]
            assert ds
            records = []
            for d in ds:
                got = h.get(f"/datasets/{d['id']}/records", params={"limit": 1000, "include": ["vectors"]})
                assert got.status_code == 200, got.text[:300]
                records.append(got.text)
        assert sum(len(json.loads(t)["items"]) for t in records) >= 1
        p.no_secret(KEY, r, push, run, report, *records)
        p.no_secret(server.api_key, r, push, run)  # nor the Argilla key
    finally:
        stop_shared_server()
