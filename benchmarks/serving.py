"""Serving benchmark: the exported student (f16 / q8_0 / q4_k_m) vs the teacher, same box, one run.

    python benchmarks/serving.py RUN [--quants f16,q8_0,q4_k_m] [--requests 40] [--concurrency N]
                                     [--teacher MODEL|none] [--teacher-requests 20] [--out FILE]

For each exported quantization and for 1 and N concurrent clients (N = cores by default), the
student is served the production way (`distilforge serve`: N single-thread llama.cpp replicas
behind the front, label grammar on) and sent the first locked held-out inputs of each label;
the teacher is served by the same launcher with N replicas and asked the way eval asks it
(system prompt + JSON label schema). Per configuration: p50/p95/mean latency, tasks/s,
tasks/s per core (one thread per replica, so cores = replicas), RSS of the server processes,
how many answers were a valid label and how many matched the gold label on these requests.

Writes RUN/serve/benchmark.json (what `decide` reads: serving.core_hour_usd / measured tasks per
core-hour). The box is shared and noisy: the load average before and after is recorded with the
numbers. Held-out texts are only sent to the local servers; none is written out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distilforge.atomic import atomic_write_json
from distilforge.manifest import read_manifest  # noqa: E402
from distilforge.runctx import prepare  # noqa: E402


def _rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    vals = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) / 1024
    except OSError:
        pass
    return round(vals.get("VmRSS", 0.0), 1), round(vals.get("VmHWM", 0.0), 1)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def drive(url: str, bodies: list[dict], concurrency: int, timeout: float = 300) -> tuple[list[float], list[str], float, int]:
    """Send every body with `concurrency` client threads; (latencies s, answers, wall s, errors)."""
    lat: list[float] = [0.0] * len(bodies)
    ans: list[str] = [""] * len(bodies)
    errors = [0]
    nxt = [0]
    lock = threading.Lock()

    def worker():
        with httpx.Client(timeout=timeout) as c:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(bodies):
                    return
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{url}/chat/completions", json=bodies[i])
                    r.raise_for_status()
                    ans[i] = r.json()["choices"][0]["message"]["content"] or ""
                except (httpx.HTTPError, KeyError, ValueError):
                    with lock:
                        errors[0] += 1
                lat[i] = time.perf_counter() - t0

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, ans, time.perf_counter() - t0, errors[0]


def summarize(kind: str, name: str, quant: str | None, replicas: int, concurrency: int, lat: list[float],
              answers: list[str], gold: list[str], labels: list[str], wall: float, errors: int, pids: list[int],
              file_mb: float | None) -> dict:
    from heldout.evaluate import parse_label

    preds = [parse_label(a, labels) for a in answers]
    rss = [_rss_mb(p) for p in pids]
    n = len(lat)
    return {"model": kind, "name": name, "quant": quant, "device": "cpu", "replicas": replicas,
            "threads_per_replica": 1, "cores": replicas, "concurrency": concurrency, "requests": n, "errors": errors,
            "valid_labels": sum(p in labels for p in preds), "correct_on_requests": sum(p == g for p, g in zip(preds, gold)),
            "p50_ms": round(_pct(lat, 0.5) * 1000, 1), "p95_ms": round(_pct(lat, 0.95) * 1000, 1),
            "mean_ms": round(statistics.fmean(lat) * 1000, 1), "wall_s": round(wall, 2),
            "tasks_per_s": round(n / wall, 3), "tasks_per_s_per_core": round(n / wall / replicas, 3),
            "rss_mb": round(sum(r[0] for r in rss), 1), "rss_mb_per_replica": [r[0] for r in rss],
            "peak_rss_mb_per_replica": [r[1] for r in rss], "file_mb": file_mb}


def bench_student(run: Path, spec, quant: str, replicas: int, texts: list[str], gold: list[str]) -> dict:
    from distilforge.teacher import status as llama_status
    from training import serve as sv
    from training.export import find_gguf

    gguf, _ = find_gguf(run, quant)
    sv.stop(spec.name)  # a student served by hand with other settings would skew the numbers
    st = sv.serve(run, spec, quant=quant, replicas=replicas)
    try:
        bodies = [{"model": spec.name, "messages": [{"role": "user", "content": t}]} for t in texts]
        drive(st["base_url"], bodies[:replicas], replicas)  # warm-up: one request per replica
        lat, ans, wall, err = drive(st["base_url"], bodies, replicas)
        pids = [s["pid"] for s in llama_status(st["gguf"])]
        return summarize("student", gguf.name, quant, replicas, replicas, lat, ans, gold, spec.label_names, wall, err,
                         pids, round(gguf.stat().st_size / 1e6, 1))
    finally:
        sv.stop(spec.name)


def bench_teacher(spec, model: str, replicas: int, texts: list[str], gold: list[str]) -> dict:
    from distilforge.teacher import serve as serve_llama
    from distilforge.teacher import status as llama_status
    from distilforge.teacher import stop as stop_llama
    from distilforge.assets import gguf_path

    st = serve_llama(model, replicas=replicas)
    try:
        urls = st["base_urls"][:replicas]
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": spec.label_names}},
                  "required": ["label"]}
        sys_prompt = spec.system_prompt() + ' Reply as JSON: {"label": "<label>"}'
        bodies = [{"model": model, "temperature": 0, "max_tokens": 24,
                   "response_format": {"type": "json_object", "schema": schema},
                   "messages": [{"role": "system", "content": sys_prompt}, {"role": "user", "content": t}]} for t in texts]
        # one client per replica, each on its own server (how eval spreads teacher requests)
        res = [None] * len(urls)

        def one(k: int) -> None:
            mine = bodies[k::len(urls)]
            drive(urls[k], mine[:1], 1)  # warm-up
            res[k] = drive(urls[k], mine, 1)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=one, args=(k,)) for k in range(len(urls))]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = max(r[2] for r in res) if len(res) > 1 else res[0][2]
        del t0
        lat, ans, g = [], [], []
        for k, r in enumerate(res):
            lat += r[0]
            ans += r[1]
            g += gold[k::len(urls)]
        pids = [s["pid"] for s in llama_status(model) if s.get("replica", 0) < replicas]
        return summarize("teacher", model, "q4_k_m (embedded)", replicas, replicas, lat, ans, g, spec.label_names, wall,
                         sum(r[3] for r in res), pids, round(gguf_path(model).stat().st_size / 1e6, 1))
    finally:
        for i in st["launched"]:
            stop_llama(model, replica=i)


def inputs(run: Path, spec, n: int) -> tuple[list[str], list[str]]:
    """The first locked rows of each label, round-robin over labels, `n` in all (verified lock)."""
    from heldout.lock import load_locked, verify

    verify(spec.heldout, spec.label_names, run / "heldout")
    rows = load_locked(run / "heldout")
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(rows["label"]):
        by.setdefault(lab, []).append(i)
    order = [idx[k] for k in range(max(map(len, by.values()))) for idx in by.values() if k < len(idx)][:n]
    return [rows[i]["text"] for i in order], [rows[i]["label"] for i in order]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--quants", default="f16,q8_0,q4_k_m", help="exported GGUFs to measure (missing ones are skipped)")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=os.cpu_count() or 1, help="N: replicas and clients (also 1)")
    ap.add_argument("--teacher", default=None, help="embedded teacher model (default: the run's), or none")
    ap.add_argument("--teacher-requests", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    spec = prepare(a.run)
    tm = read_manifest(a.run / "train") or {}
    texts, gold = inputs(a.run, spec, a.requests)
    levels = sorted({1, max(1, a.concurrency)})
    out = {"run": str(a.run), "task": spec.name, "adapter_sha256": tm.get("adapter_sha256"),
           "box": {"cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg(),
                   "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                if ln.startswith("model name")), None)},
           "requests": len(texts), "concurrency_levels": levels, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "results": []}
    from training.export import ExportError

    for q in [q.strip() for q in a.quants.split(",") if q.strip()]:
        for r in levels:
            try:
                row = bench_student(a.run, spec, q, r, texts, gold)
            except ExportError as e:
                print(f"skip {q}: {e}", file=sys.stderr)
                break
            out["results"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "quant", "replicas", "p50_ms", "p95_ms", "tasks_per_s_per_core",
                                                  "rss_mb", "valid_labels", "correct_on_requests")}), flush=True)
    teacher = spec.teacher.model if a.teacher is None else a.teacher
    if teacher != "none" and spec.teacher.endpoint == "embedded":
        tt, tg = texts[: a.teacher_requests], gold[: a.teacher_requests]
        for r in levels:
            row = bench_teacher(spec, teacher, r, tt, tg)
            out["results"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "name", "replicas", "p50_ms", "p95_ms", "tasks_per_s_per_core",
                                                  "rss_mb", "valid_labels", "correct_on_requests")}), flush=True)
    out["box"]["loadavg_after"] = os.getloadavg()
    out["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    dest = a.out or a.run / "serve" / "benchmark.json"
    atomic_write_json(dest, out)
    print(f"wrote {dest}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
