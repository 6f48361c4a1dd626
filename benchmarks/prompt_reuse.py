"""Benchmark (not a test): how much of each generation prompt the embedded teacher reads again.

The embedded teacher keeps the previous request's KV cache and re-reads a new prompt only after
the longest prefix the two share, in whole 32-token blocks (distilforge/llama_server.py). On this
CPU the 1.5B teacher reads a prompt at ~25 tokens/s, so a prompt that opens with what differs
between requests costs seconds per request. This sends the demo's own planned batch requests
(examples/banking77/task.yaml, profile demo: 4 messages per request) to one fresh embedded server,
rendered with the old and the new batch template in turn (`--templates`), and reads from the
server's log how many prompt tokens each request made it evaluate and how long that took.
`max_tokens` 1: only the reading is measured (the answer is the same work for both orders).
Each template's group of requests runs `--rounds` times, alternating, so drift in machine load is
shared; the first request of a group starts from the other template's cache (as a real run's
first request starts cold).

`--task extraction|instruction`: the same for examples/extraction or examples/instruction's row
requests, `<type>_v1` (per-request style first) against `<type>_v2` (schema / style guide first).

    python benchmarks/prompt_reuse.py [--model qwen2.5-coder-1.5b] [--requests 10] [--rounds 2] [--task T]

Results: benchmarks/results/prompt_reuse.json (classification), prompt_reuse_<task>.json.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PERF = re.compile(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens")


TASKS = {  # --task: (example spec, profile, templates compared by default)
    "classification": ("banking77", "demo", "classification_batch_v1,classification_batch_v2"),
    "extraction": ("extraction", None, "extraction_v1,extraction_v2"),
    "instruction": ("instruction", None, "instruction_v1,instruction_v2"),
}


def planned_requests(model: str, n: int, task: str = "classification") -> tuple[object, list[dict]]:
    """The example spec's first `n` requests, in the order `generate` sends them: the demo's batch
    requests for classification, the first-phase row requests for extraction and instruction."""
    from curation.generation.plan import batch, batch_requests, plan_base
    from distilforge.spec import load_spec

    folder, profile, _ = TASKS[task]
    spec = load_spec(REPO / "examples" / folder / "task.yaml", profile=profile)
    spec = spec.model_copy(update={"teacher": spec.teacher.model_copy(update={"model": model, "replicas": 1})})
    if task == "classification":
        return spec, batch_requests(spec, batch(spec, plan_base(spec)))[:n]
    return spec, plan_base(spec)[:n]


def log_reads(log: Path, start: int) -> tuple[list[tuple[float, int]], int]:
    """(ms, tokens) of every prompt read logged after byte `start`, and the new end."""
    data = log.read_bytes()
    return [(float(ms), int(t)) for ms, t in PERF.findall(data[start:].decode(errors="replace"))], len(data)


@contextmanager
def own_server(model: str, log: Path):
    """A fresh single-thread embedded server for this benchmark alone, launched as `teacher serve`
    launches one (distilforge.teacher.serve would reuse a running server for the model, whose
    cache another client's requests would disturb)."""
    from distilforge.assets import gguf_path
    from distilforge.teacher import _free_port, healthy, server_command

    port = _free_port()
    cmd = server_command(model, gguf_path(model), port)
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while not healthy(url):
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{log}: the server did not come up")
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def run_group(client, model: str, tname: str, reqs: list[dict], log: Path) -> dict:
    from curation import formats

    start = log.stat().st_size
    lat, full = [], []
    for r in reqs:
        t0 = time.perf_counter()
        resp = client.chat.completions.create(model=model, messages=formats.messages(tname, r),
                                              temperature=0.0, max_tokens=1)
        lat.append(time.perf_counter() - t0)
        full.append(resp.usage.prompt_tokens)
    time.sleep(0.5)  # the server flushes its timing lines after the response
    reads, _ = log_reads(log, start)
    if len(reads) != len(reqs):
        raise SystemExit(f"{log}: expected {len(reqs)} timing lines, found {len(reads)}")
    return {"prompt_tokens": full, "tokens_read": [t for _, t in reads], "read_ms": [ms for ms, _ in reads],
            "latency_s": [round(x, 3) for x in lat]}


def summarize(groups: list[dict]) -> dict:
    cat = {k: [x for g in groups for x in g[k]] for k in groups[0]}
    n = len(cat["prompt_tokens"])
    return {"requests": n, "prompt_tokens_mean": round(statistics.mean(cat["prompt_tokens"]), 1),
            "tokens_read_mean": round(statistics.mean(cat["tokens_read"]), 1),
            "share_read": round(sum(cat["tokens_read"]) / sum(cat["prompt_tokens"]), 3),
            "read_s_mean": round(statistics.mean(cat["read_ms"]) / 1000, 2),
            "latency_s_mean": round(statistics.mean(cat["latency_s"]), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--requests", type=int, default=10, help="planned batch requests per group")
    ap.add_argument("--rounds", type=int, default=2, help="groups per template, alternating")
    ap.add_argument("--task", choices=list(TASKS), default="classification",
                    help="which example spec's requests (examples/banking77 demo, examples/extraction, examples/instruction)")
    ap.add_argument("--templates", help="old,new template names (default: the task's v1 and its default)")
    ap.add_argument("--results", help="default benchmarks/results/prompt_reuse[_<task>].json")
    a = ap.parse_args()
    a.templates = a.templates or TASKS[a.task][2]
    a.results = a.results or str(REPO / "benchmarks" / "results" / (
        "prompt_reuse.json" if a.task == "classification" else f"prompt_reuse_{a.task}.json"))
    from openai import OpenAI

    from distilforge.atomic import atomic_write_json

    load = os.getloadavg()[0]
    names = a.templates.split(",")
    _, reqs = planned_requests(a.model, a.requests, a.task)
    logdir = Path(tempfile.mkdtemp(prefix="bench-reuse-"))
    groups: dict[str, list[dict]] = {n: [] for n in names}
    log = logdir / "teacher.log"
    with own_server(a.model, log) as url:
        client = OpenAI(base_url=url, api_key="embedded", timeout=600)
        for rnd in range(a.rounds):
            for name in names:
                g = run_group(client, a.model, name, reqs, log)
                groups[name].append(g)
                print(f"round {rnd + 1} {name}: read {statistics.mean(g['tokens_read']):.0f} of "
                      f"{statistics.mean(g['prompt_tokens']):.0f} prompt tokens a request, "
                      f"{statistics.mean(g['read_ms']) / 1000:.2f} s", flush=True)
    res = {n: summarize(gs) for n, gs in groups.items()}
    base, new = res[names[0]], res[names[-1]]
    out = {"benchmark": "benchmarks/prompt_reuse.py",
           "command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["benchmarks/prompt_reuse.py", *sys.argv[1:]]),
           "model": a.model, "task": a.task,
           "spec": (f"examples/{TASKS[a.task][0]}/task.yaml" + (f", profile {TASKS[a.task][1]}" if TASKS[a.task][1] else "")
                    + (" (first planned batch requests)" if a.task == "classification" else " (first planned requests)")),
           "load_before": round(load, 2), "results": res,
           "read_s_saved_per_request": round(base["read_s_mean"] - new["read_s_mean"], 2),
           "latency_ratio": round(new["latency_s_mean"] / base["latency_s_mean"], 3),
           "groups": groups}
    atomic_write_json(Path(a.results), out)
    for n, r in res.items():
        print(f"{n}: {r}")
    print(f"saved {out['read_s_saved_per_request']} s of prompt reading per request; latency ratio {out['latency_ratio']}")


if __name__ == "__main__":
    main()
