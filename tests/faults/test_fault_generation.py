"""Generation faults (issue 14 items 3 and 4), against real parts: the real CLI in a subprocess, a
closed port, the real fault-injecting proxy, the real 0.5B llama.cpp teacher.

- A teacher that never answers (closed port, HTTP 500 on every request) or answers only garbage is a
  result: every row is on disk as `failed` with its reason, the command ends with one error line
  and rc 1, and the planted API key appears nowhere.
- `kill -9` of the CLI mid-generation: its generation child, distilabel's workers and the teacher
  server it started die with it; an immediate rerun takes over the run and ends with the same rows
  as an uninterrupted run, each shard committed exactly once.
- A second writer on the same RUN is refused with one line naming the holder; once the holder is
  gone (or only a left-over child of it holds the lock and is killed), the next command takes over.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest

from faultproxy import FaultProxy

REPO = Path(__file__).resolve().parents[2]


def cli(*args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real `distilforge` command in a subprocess (as tests/conftest.py's `cli`; imported by
    name, `conftest` may resolve to tests/faults/conftest.py, which has no runner)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)

FAKE_KEY = "sk-distilforge-FAKE-gen-5d1e9b0c77a34f18"
KEY_ENV = "DF_GEN_FAULT_KEY"
CLOSED = "http://127.0.0.1:9/v1"  # the discard port: nothing listens on loopback

LABELS = """\
  - {name: card_arrival, description: the customer's new card has not arrived yet}
  - {name: exchange_rate, description: the customer asks what exchange rate is used}"""


def remote_spec(tmp: Path, base_url: str, retries: int = 1, timeout: int = 5, per_label: int = 1) -> Path:
    p = tmp / "spec.yaml"
    p.write_text(f"""\
name: gen-faults
type: classification
instruction: Classify the customer's message into its intent.
labels:
{LABELS}
teacher: {{endpoint: openai, base_url: "{base_url}", model: qwen2.5-coder-0.5b, api_key_env: {KEY_ENV},
          structured_output: none, max_tokens: 40, timeout_s: {timeout}, max_retries: {retries}}}
generation: {{per_label: {per_label}, shard_size: 1, seed: 5, invalid_retries: 0,
             input_description: a bank customer writing to the support chat}}
heldout: {{source: ../shared/data/banking77/test.csv, label_column: category}}
""")
    return p


def gen(run: Path, spec: Path | None = None, **env) -> subprocess.CompletedProcess:
    return cli("generate", run, *(["--spec", spec] if spec else []), env={KEY_ENV: FAKE_KEY, **env}, timeout=600)


def rows(run: Path) -> datasets.Dataset:
    return datasets.load_from_disk(str(run / "generate" / "rows"))


def ledger(run: Path) -> list[dict]:
    p = run / "generate" / "ledger.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


# --- the teacher fails on every request ------------------------------------------------------

@pytest.mark.parametrize("fault", ["closed port", "HTTP 500"])
def test_teacher_never_answering_is_one_line_and_rows_keep_reasons(tmp_path, probe, fault):
    p = probe(f"teacher fully failing: {fault}")
    run = tmp_path / "run"
    if fault == "closed port":
        r, url, log = gen(run, remote_spec(tmp_path, CLOSED)), CLOSED, []
        reason = "connection refused"
    else:  # every POST answered 500 by a real proxy (upstream never reached)
        with FaultProxy(CLOSED, [{"fault": "500", "times": 1000}], expect_key=FAKE_KEY) as px:
            r, url = gen(run, remote_spec(tmp_path, px.base_url)), px.base_url
            log = list(px.log)
        reason = "HTTP 500"
        assert log and all(e["fault"] == "500" and e["key_ok"] for e in log)  # the key did reach the server
        assert len(log) == 2 * 2  # 2 rows x (1 try + 1 retry): bounded
    line = p.one_line(r, rc=1, contains=f"teacher unreachable at {url}: {reason}")
    assert "generate/rows" in line
    ds = rows(run)
    assert len(ds) == 2 and set(ds["status"]) == {"failed"}
    assert all(e.startswith(reason) and "retries" in e for e in ds["error"]), ds["error"]
    m = json.loads((run / "generate" / "manifest.json").read_text())
    assert m["ok"] == 0 and m["failed"] == 2 and m["pending_shards"] == 2 and m["failures"] == {reason: 2}
    led = ledger(run)
    assert len(led) == 2 and not any(e["committed"] for e in led)
    assert all(list(e["errors"].values())[0].startswith(reason) for e in led)  # the reason is in the ledger too
    p.no_secret(FAKE_KEY, r, run)
    p.rows(lost=0, duplicated=0)


def test_teacher_answering_only_garbage_is_one_line_with_the_parse_error(tmp_path, probe, fast_teacher):
    p = probe("teacher fully failing: garbage answers")
    run = tmp_path / "run"
    with FaultProxy(fast_teacher["base_url"], [{"fault": "notjson", "times": 1000}], expect_key=FAKE_KEY) as px:
        spec = remote_spec(tmp_path, px.base_url, timeout=120)
        r = gen(run, spec)
        p.one_line(r, rc=1, contains="all 2 rows failed: not JSON")
        r2 = gen(run)  # nothing changed: no request, the same verdict (not a silent "skipped")
        p.one_line(r2, rc=1, contains="all 2 rows failed: not JSON")
        assert len(px.log) == 2
    ds = rows(run)
    assert len(ds) == 2 and set(ds["status"]) == {"failed"} and all(e.startswith("not JSON") for e in ds["error"])
    led = ledger(run)
    assert [e["committed"] for e in led] == [True, True]  # answered: committed as failed rows, not re-asked
    assert all(v.startswith("not JSON") for e in led for v in e["errors"].values())
    p.no_secret(FAKE_KEY, r, r2, run)
    p.rows(lost=0, duplicated=0)


# --- kill -9 mid-generation ------------------------------------------------------------------

def embedded_spec(tmp: Path, gguf: str) -> Path:
    """The embedded teacher from the 0.5B GGUF file itself: with a private DISTILFORGE_CACHE each
    run starts (and owns) its own server, so what a killed run leaves behind is visible."""
    p = tmp / "embedded.yaml"
    p.write_text(f"""\
name: gen-kill
type: classification
instruction: Classify the customer's message into its intent.
labels:
{LABELS}
teacher: {{model: "{gguf}", temperature: 0, max_tokens: 40, structured_output: none}}
generation: {{per_label: 4, shard_size: 2, seed: 11, invalid_retries: 0,
             input_description: a bank customer writing to the support chat}}
heldout: {{source: ../shared/data/banking77/test.csv, label_column: category}}
""")
    return p


def key_rows(ds: datasets.Dataset) -> list[tuple]:
    return sorted(zip(ds["id"], ds["text"], ds["label"], ds["status"]))


def shard_rows(run: Path, shards: set[str]) -> set[str]:
    return {json.loads(x)["id"] for s in shards for x in (run / "generate" / "shards" / f"{s}.jsonl").read_text().splitlines()}


def test_kill9_mid_generation_leaves_no_writer_and_the_rerun_is_exactly_once(tmp_path, probe, fast_teacher):
    p = probe("kill -9 mid-generation, immediate rerun")
    cache = tmp_path / "cache"
    env = {"DISTILFORGE_CACHE": str(cache)}
    spec = embedded_spec(tmp_path, fast_teacher["gguf"])
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    r = cli("generate", ref_run, "--spec", spec, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = rows(ref_run)
    assert len(ref) == 8

    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "generate", str(run), "--spec", str(spec)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.time() + 400
    while time.time() < deadline and not any(e["committed"] for e in ledger(run)):
        assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.1)
    from distilforge.runlock import descendants

    tree = descendants(proc.pid)  # generation child, distilabel workers + manager, the teacher server
    states = [json.loads(s.read_text()) for s in (cache / "teacher").glob("*.json")]
    assert [s["owner"]["pid"] for s in states] == [proc.pid]  # the run owns the server it started
    server = states[0]["pid"]
    assert server in tree and len(tree) >= 3
    proc.send_signal(signal.SIGKILL)  # the CLI alone, not its process group
    proc.wait()
    log.close()
    committed_at_kill = {e["shard"] for e in ledger(run) if e["committed"]}
    bytes_at_kill = {s: (run / "generate" / "shards" / f"{s}.jsonl").read_bytes() for s in committed_at_kill}
    t0 = time.time()
    while time.time() - t0 < 5 and any(alive(x) for x in tree):
        time.sleep(0.1)
    left = [x for x in tree if alive(x)]
    assert not left, f"processes of the killed run still alive after 5 s: {left}"
    assert 1 <= len(committed_at_kill) < 4, f"kill landed outside the run ({len(committed_at_kill)} shards)"
    after_kill = {e["shard"] for e in ledger(run) if e["committed"]}
    time.sleep(1)
    assert {e["shard"] for e in ledger(run) if e["committed"]} == after_kill  # nobody commits any more

    r2 = cli("generate", run, env=env)  # immediately: no wait, no cleanup by hand
    assert r2.returncode == 0, r2.stderr[-3000:]
    ds = rows(run)
    committed = [e["shard"] for e in ledger(run) if e["committed"]]
    ids = ds["id"]
    lost = len(set(ref["id"]) - set(ids))
    duplicated = (len(ids) - len(set(ids))) + (len(committed) - len(set(committed)))
    p.rows(lost=lost, duplicated=duplicated)
    assert sorted(committed) == sorted(set(committed)) and len(committed) == 4  # one committed entry per shard
    # The same rows as the uninterrupted run, texts included: the shards the killed run committed
    # stay as they were, and those asked again after the restart get the same answers from a fresh
    # server (prompts are read in fixed blocks, distilforge/llama_server.py, so an answer does not
    # depend on what the server had read before).
    assert key_rows(ds) == key_rows(ref)
    before = shard_rows(run, committed_at_kill)
    assert len(before) >= 2 and len(set(ds["id"]) - before) >= 2  # rows on both sides of the kill
    assert {s: (run / "generate" / "shards" / f"{s}.jsonl").read_bytes() for s in committed_at_kill} == bytes_at_kill
    st = cli("teacher", "status", env=env)
    assert st.returncode == 0 and "no embedded teacher running" in st.stdout, st.stdout
    assert not alive(server) and not list((cache / "teacher").glob("*.json"))


# --- a second writer -------------------------------------------------------------------------

HOLD = """\
import os, sys, time
sys.path.insert(0, {repo!r})
from distilforge import runlock
lock = runlock.acquire({run!r}, "generate")
if {fork}:
    if os.fork() == 0:  # a child that inherits the lock, like the generation child does
        time.sleep(120)
        os._exit(0)
print("held", flush=True)
time.sleep(120)
"""


def hold(run: Path, fork: bool = False) -> subprocess.Popen:
    h = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), run=str(run), fork=fork)],
                         stdout=subprocess.PIPE, text=True)
    assert h.stdout.readline().strip() == "held"
    return h


def test_a_second_writer_is_refused_while_the_holder_lives(tmp_path, probe):
    p = probe("second writer on the same RUN")
    run = tmp_path / "run"
    spec = remote_spec(tmp_path, CLOSED)
    run.mkdir()
    h = hold(run)
    try:
        r = gen(run, spec)
        line = p.one_line(r, rc=2, contains=f"is in use by pid {h.pid}")
        assert "distilforge generate" in line and not (run / "generate").exists()  # refused before any write
        r_run = cli("run", spec, "--out", run, env={KEY_ENV: FAKE_KEY})
        p.one_line(r_run, rc=2, contains=f"is in use by pid {h.pid}")
    finally:
        h.kill()
        h.wait()
    r = gen(run, spec)  # the holder died: the next command takes over (and meets the closed port)
    p.one_line(r, rc=1, contains="teacher unreachable")
    p.no_secret(FAKE_KEY, r, run)


def test_a_left_over_child_of_a_dead_holder_is_named_then_taken_over(tmp_path, probe):
    p = probe("left-over child holding the RUN lock")
    run = tmp_path / "run"
    spec = remote_spec(tmp_path, CLOSED)
    run.mkdir()
    h = hold(run, fork=True)
    from distilforge.runlock import descendants

    kids = descendants(h.pid)
    assert len(kids) == 1
    h.kill()
    h.wait()
    try:
        r = gen(run, spec)  # waits a few seconds for the child to die with its parent, then refuses
        p.one_line(r, rc=2, contains=f"is in use by pid {kids[0]} left behind by pid {h.pid}")
    finally:
        os.kill(kids[0], signal.SIGKILL)
    time.sleep(0.5)
    r = gen(run, spec)
    p.one_line(r, rc=1, contains="teacher unreachable")
