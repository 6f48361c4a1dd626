"""Score any OpenAI-compatible endpoint (a served student, a hosted model) on the locked rows with
the teacher's scorer, and the timed single requests the A/B shadow replay makes."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from distilforge.secrets import reveal
from heldout.evaluate import (bootstrap_ci, paired_bootstrap, parse_label, sample_rows, score_teacher, stratified_rows,
                              summarize)

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec


def endpoint_model(url: str, api_key: str = "none", default: str | None = None) -> tuple[str | None, dict]:
    """(first model id the endpoint lists, its `meta` when it is a distilforge front) — or the default."""
    import httpx

    try:
        r = httpx.get(f"{url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
        data = (r.json() or {}).get("data") or [] if r.status_code == 200 else []
        if data:
            return data[0].get("id") or default, data[0].get("meta") or {}
    except (httpx.HTTPError, ValueError):
        pass
    return default, {}


def ask_timed(client, model: str, system_prompt: str, text: str, labels: list[str],
              fmt: dict | None = None) -> dict:
    """One classification request, timed: {answer, label, latency_s, tokens} (for A/B shadow replay)."""
    kw = {"extra_body": {"response_format": fmt}} if fmt else {}
    t0 = time.perf_counter()
    r = client.chat.completions.create(
        model=model, temperature=0, max_tokens=24,
        messages=[{"role": "system", "content": system_prompt + ' Reply as JSON: {"label": "<label>"}'},
                  {"role": "user", "content": text}], **kw)
    dt = time.perf_counter() - t0
    raw = r.choices[0].message.content or ""
    u = r.usage
    return {"answer": raw, "label": parse_label(raw, labels), "latency_s": round(dt, 4),
            "tokens": {"prompt": u.prompt_tokens, "completion": u.completion_tokens} if u else None}


def endpoint_eval(spec: TaskSpec, run: Path, url: str, *, name: str = "served", model: str | None = None,
                  api_key=None, structured: str = "none", max_per_label: int | None = None) -> dict:
    """Score an OpenAI-compatible endpoint on the verified locked rows with the teacher scorer.

    Same rows as `eval` (same sampling, so the PyTorch student's per-row results pair with these:
    the side-by-side carries a paired bootstrap), same scorer as the teacher (`score_teacher`).
    Writes RUN/eval/endpoints/<name>.json and a `served` block in eval/metrics.json; returns the result.
    """
    from distilforge.teacher import Endpoint
    from distilforge.atomic import atomic_write_json
    from distilforge.layout import Run
    from distilforge.manifest import MANIFEST, read_manifest, sha256_json
    from distilforge.secrets import Secret
    from heldout.lock import HeldoutError, load_locked, verify

    if not spec.label_names:  # a served student is scored by its label answers (score_teacher)
        raise HeldoutError(f"eval --endpoint: only classification tasks are scored through an endpoint "
                           f"('{spec.name}' is {spec.type})")
    r = Run(run)
    info = verify(spec.heldout, spec, r.heldout)
    rows = load_locked(r.heldout)
    rows = rows.select(sample_rows(len(rows), spec.eval.max_rows))
    gold_all, texts_all, ids_all = list(rows["label"]), list(rows["text"]), list(rows["id"])
    pos = stratified_rows(gold_all, max_per_label)
    key = api_key if api_key is not None else Secret("none")
    url = url.rstrip("/")
    found, meta = endpoint_model(url, reveal(key), spec.name)
    model = model or found
    ep = Endpoint(url, model, key, "openai")
    labels = spec.label_names
    preds, tokens = score_teacher(ep, spec.system_prompt("full"), [texts_all[i] for i in pos], labels, structured,
                                  spec.teacher.timeout_s, spec.teacher.max_retries)
    gold = [gold_all[i] for i in pos]
    s = summarize(preds, gold, labels)
    s.pop("predictions", None)
    secs = tokens.get("seconds") or 0
    cores = (meta.get("replicas") or 0) * (meta.get("threads_per_replica") or 0) or None
    res = {"name": name, "endpoint": url, "model": model, "meta": meta, "n": len(pos), "rows": len(pos),
           "row_ids": [ids_all[i] for i in pos] if len(pos) < len(gold_all) else None,
           "heldout_sha256": info["sha256"], "structured": structured, **s, "tokens": tokens,
           "throughput": {"tasks_per_s": round(len(pos) / secs, 3) if secs else None, "concurrency": 1,
                          "cores": cores, "seconds": secs}}
    tm = read_manifest(r.train) or {}
    res["adapter_sha256"] = tm.get("adapter_sha256")
    mpath = r.metrics
    metrics = json.loads(mpath.read_text()) if mpath.exists() else None
    ok = (metrics and metrics.get("heldout_sha256") == info["sha256"] and metrics.get("row_ids") == ids_all
          and "student" in (metrics.get("models") or {}))
    if ok:
        st = metrics["models"]["student"]
        res["vs_student"] = {**paired_bootstrap(s["correct"], [st["correct"][i] for i in pos]),
                             "student_accuracy": round(float(np.mean([st["correct"][i] for i in pos])), 4),
                             "student_accuracy_ci": bootstrap_ci([st["correct"][i] for i in pos]),
                             "student_adapter_sha256": metrics.get("adapter_sha256"), "rows": len(pos)}
    atomic_write_json(r.endpoint_results / f"{name}.json", res)
    if ok:
        metrics.setdefault("served", {})[name] = {k: res[k] for k in ("endpoint", "model", "n", "accuracy",
                                                                       "accuracy_ci", "macro_f1", "vs_student")}
        atomic_write_json(mpath, metrics)
        em = read_manifest(r.eval)
        if em:
            em["metrics_sha256"] = sha256_json(metrics)
            em.setdefault("served", {})[name] = res["accuracy"]
            atomic_write_json(r.eval / MANIFEST, em)
    return res


def print_served(res: dict) -> None:
    """PyTorch student vs the endpoint, side by side with CIs."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"held-out accuracy, same rows (n={res['n']}, locked)")
    for col in ("model", "accuracy", "95% CI", "macro-F1"):
        t.add_column(col)
    v = res.get("vs_student")
    if v:
        lo, hi = v["student_accuracy_ci"]
        t.add_row("student (PyTorch, label likelihood)", f"{v['student_accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]", "")
    lo, hi = res["accuracy_ci"]
    t.add_row(f"{res['name']} ({res['model']} @ {res['endpoint']})", f"{res['accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]",
              f"{res['macro_f1']:.3f}")
    Console().print(t)
    if v:
        print(f"{res['name']} - student: {v['diff']:+.3f}, 95% CI [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], p = {v['p_value']}")
    tp = res.get("throughput") or {}
    if tp.get("tasks_per_s"):
        print(f"throughput: {tp['tasks_per_s']:.2f} tasks/s, one client" + (f", {tp['cores']} core(s)" if tp.get("cores") else ""))
