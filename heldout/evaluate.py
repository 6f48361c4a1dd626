"""Score base, student and teacher on the locked held-out set — and refuse if it changed.

Local models are scored by label likelihood: for each row, the log-probability of every label
string (plus the end-of-turn token) after the student's prompt; the argmax is the prediction.
No free-text parsing, so no "unparseable answer" failures can flatter or punish a model.
The shared system prompt runs once; each forward pass then scores every label of a batch of rows.
The teacher is scored through its endpoint with output constrained to the label set.
Every headline number carries a bootstrap 95 % CI.
"""
from __future__ import annotations

import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from distilforge.secrets import reveal

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec
    from distilforge.teacher import Endpoint


def bootstrap_ci(correct: list[int] | np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float]:
    a = np.asarray(correct, dtype=float)
    if len(a) == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)
    return [round(float(np.percentile(means, 2.5)), 4), round(float(np.percentile(means, 97.5)), 4)]


def summarize(preds: list[str], gold: list[str], labels: list[str]) -> dict:
    correct = [int(p == g) for p, g in zip(preds, gold)]
    idx = {lab: i for i, lab in enumerate(labels)}
    conf = [[0] * len(labels) for _ in labels]
    for p, g in zip(preds, gold):
        if p in idx:
            conf[idx[g]][idx[p]] += 1
    per_label, f1s = {}, []
    for lab in labels:
        i = idx[lab]
        tp = conf[i][i]
        n = sum(conf[i]) if all(p in idx for p in preds) else sum(1 for g in gold if g == lab)
        pred_n = sum(conf[r][i] for r in range(len(labels)))
        prec = tp / pred_n if pred_n else 0.0
        rec = tp / n if n else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        f1s.append(f1)
        per_label[lab] = {"accuracy": round(rec, 4), "precision": round(prec, 4), "f1": round(f1, 4), "n": n}
    return {"accuracy": round(float(np.mean(correct)), 4) if correct else 0.0, "accuracy_ci": bootstrap_ci(correct),
            "macro_f1": round(float(np.mean(f1s)), 4), "per_label": per_label, "confusion": conf,
            "correct": correct, "predictions": preds}


class progress:
    """One progress bar per scored model (base, each student, teacher), on stderr so stdout keeps
    only the results table. Scoring is most of an eval's 2-4 minutes, and a silent eval looks hung:
    in a terminal this is a live rich bar (rows done, elapsed, time left); in a log (`make demo |
    tee`, CI, a subprocess) rich would draw nothing, so it prints a line at every ~10 % instead.
    `advance(n)` is called per batch (local models) or per request (teacher), under the caller's lock."""

    def __init__(self, desc: str, total: int):
        from rich.console import Console

        self.desc, self.total, self.done, self.t0 = desc, total, 0, time.time()
        self.console = Console(stderr=True)
        self.step, self.shown, self.bar = max(1, total // 10), -1, None

    def __enter__(self) -> "progress":
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total)
        else:
            self._line()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.advance(self.task, n)
        elif self.done // self.step > self.shown or self.done >= self.total:
            self._line()

    def _line(self) -> None:
        self.shown = self.done // self.step
        el = time.time() - self.t0
        left = f", ~{el / self.done * (self.total - self.done):.0f} s left" if 0 < self.done < self.total else ""
        pct = 100 * self.done // self.total if self.total else 100
        print(f"{self.desc}: {self.done}/{self.total} rows ({pct}%), {el:.0f} s{left}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def score_local(model_path: str, adapter: str | None, prompts: list[list[dict]], labels: list[str],
                desc: str = "scoring", return_scores: bool = False, batch_size: int = 8):
    """Label-likelihood prediction for each prompt with a local HF model (+ optional LoRA adapter).

    `return_scores`: also return the [rows, labels] matrix of summed label log-probabilities
    (used to break accuracy ties when choosing between two adapters).

    Why it is shaped this way (scoring is most of an eval's CPU time): the shared system prompt runs
    once; then each forward pass takes `batch_size` rows, each row being its own tokens (left-padded)
    followed by EVERY candidate label packed into one sequence. A custom attention mask lets each
    label attend to the prompt and to its own earlier tokens only, so one pass scores all labels of
    all rows in the batch with no padding between labels. A LoRA adapter is merged into the weights
    first. Exactly the same log-probabilities as scoring each (row, label) pair separately, up to
    float rounding (tests/test_eval_scoring.py checks it against that naive loop).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from distilforge.models import load_tokenizer

    tok = load_tokenizer(adapter or model_path)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # fp32 everywhere: scores comparable across devices
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.to(dev).eval()
    end = tok.eos_token or ""
    label_ids = [tok(lab + end, add_special_tokens=False).input_ids for lab in labels]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Packed candidates: label k feeds its tokens but the last (which is only predicted).
    cand, block, depth, starts = [], [], [], []
    for k, ids in enumerate(label_ids):
        starts.append(len(cand))
        cand += ids[:-1]
        block += [k] * (len(ids) - 1)
        depth += list(range(len(ids) - 1))
    C = len(cand)
    cand_t = torch.tensor(cand, dtype=torch.long, device=dev)
    block_t, depth_t = torch.tensor(block, device=dev), torch.tensor(depth, device=dev)
    # Where each label's log-probs come from, in the kept logits (index 0 = the row's last token).
    gather = [(torch.tensor([0] + [1 + starts[k] + d for d in range(len(ids) - 1)], device=dev),
               torch.tensor(ids, device=dev)) for k, ids in enumerate(label_ids)]
    rows = [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False).input_ids
            for m in prompts]
    # The system prompt (instruction + label list) is the same for every row: run it once.
    common = rows[0] if rows else []
    for r in rows[1:]:
        k = next((i for i, (a, b) in enumerate(zip(common, r)) if a != b), min(len(common), len(r)))
        common = common[:k]
    common = common[: max(len(common) - 1, 0)]  # every row keeps at least one token of its own
    P = len(common)
    preds, scores = [], []
    with torch.inference_mode(), progress(desc, len(prompts)) as bar:
        prefix = model(input_ids=torch.tensor([common], device=dev), use_cache=True).cache if P else None
        for b0 in range(0, len(rows), batch_size):
            owns = [r[P:] for r in rows[b0:b0 + batch_size]]
            B, L = len(owns), max(len(o) for o in owns)
            lens = torch.tensor([len(o) for o in owns], device=dev)
            own = torch.tensor([[pad] * (L - len(o)) + o for o in owns], dtype=torch.long, device=dev)
            ids = torch.cat([own, cand_t[None].expand(B, -1)], 1)
            q = torch.arange(L + C, device=dev)
            first = L - lens  # where each row's own tokens begin (left padding before)
            own_pos = P + (q[None, :L] - first[:, None]).clamp(min=0)
            pos = torch.cat([own_pos, P + lens[:, None] + depth_t[None]], 1)
            is_cand = q >= L
            qb = torch.where(is_cand, torch.cat([torch.full((L,), -1, device=dev), block_t]), -1)
            causal = q[None, :] <= q[:, None]
            same_label = (~is_cand[:, None]) | (~is_cand[None, :]) | (qb[:, None] == qb[None, :])
            key_ok = (q[None, :] >= first[:, None]) | is_cand[None, :]  # padding is never attended
            mask = (causal & same_label)[None] & key_ok[:, None, :]
            mask = torch.cat([torch.ones(B, L + C, P, dtype=torch.bool, device=dev), mask], 2)[:, None]
            past = None
            if prefix is not None:
                past = copy.deepcopy(prefix)
                past.batch_repeat_interleave(B)
            logits = model(input_ids=ids, cache=past, position_ids=pos, attention_mask=mask,
                           use_cache=True, logits_to_keep=C + 1).logits
            logp = torch.log_softmax(logits.float(), -1)
            score = torch.stack([logp[:, at, tk].sum(-1) for at, tk in gather], 1)
            for srow in score:
                preds.append(labels[int(srow.argmax())])
                scores.append(srow.cpu().numpy())
            bar.advance(B)
    if return_scores:
        return preds, np.stack(scores) if scores else np.zeros((0, len(labels)))
    return preds


def gold_logprob(scores: np.ndarray, gold: list[str], labels: list[str]) -> float:
    """Mean log-probability of the gold label, normalized over the label set."""
    if len(scores) == 0:
        return float("nan")
    z = scores - scores.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    idx = [labels.index(g) for g in gold]
    return float(np.mean(logp[np.arange(len(gold)), idx]))


def score_teacher(endpoint: Endpoint, system_prompt: str, texts: list[str], labels: list[str], structured: str,
                  timeout: float = 120, max_retries: int = 4) -> tuple[list[str], dict]:
    """Teacher predictions through its OpenAI-compatible endpoint(s), constrained to the label set.
    With several servers (replicas), one thread per server; predictions keep the input order."""
    from heldout.answers import ask_teacher

    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}}, "required": ["label"]}
    if structured == "auto":
        structured = "llama_cpp" if endpoint.kind == "embedded" else "openai"
    fallback = structured == "fallback"
    if structured == "llama_cpp":
        fmt = {"type": "json_object", "schema": schema}
    elif structured == "openai":
        fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}}
    else:
        fmt = None
    # `fallback`: the same JSON question without a grammar, and only an answer that names no label
    # is asked again under the grammar (embedded) or the schema (other servers). The grammar costs
    # ~1.7 s a request on the embedded 1.5B; asking for JSON (not the bare label, which the 0.5B
    # got right 7/16 vs 12/16 on Banking77 train rows) keeps the answers the grammar gives.
    retry_fmt = ({"type": "json_object", "schema": schema} if endpoint.kind == "embedded" else
                 {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}})

    def ask(request, msgs: list[dict]) -> tuple[str, list]:
        raw, usage = request(msgs)
        if fallback and parse_label(raw, labels) == "<invalid>":
            raw, again = request(msgs, retry_fmt)
            return raw, [usage, again]
        return raw, [usage]

    sys_text = system_prompt + ' Reply as JSON: {"label": "<label>"}'
    answers, tokens = ask_teacher(endpoint, [[{"role": "system", "content": sys_text}, {"role": "user", "content": t}]
                                             for t in texts], max_tokens=24, response_format=fmt, timeout=timeout,
                                  max_retries=max_retries, desc="scoring teacher", ask=ask)
    if not fallback:
        tokens.pop("requests")
    return [parse_label(a, labels) for a in answers], tokens


def paired_bootstrap(a: list[int], b: list[int], n_boot: int = 2000, seed: int = 0) -> dict:
    """Difference of accuracies (a - b) on the same rows, with CI and a two-sided p-value."""
    x = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    d = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    p = 2 * min((d <= 0).mean(), (d >= 0).mean())
    return {"diff": round(float(x.mean()), 4), "ci": [round(float(np.percentile(d, 2.5)), 4),
            round(float(np.percentile(d, 97.5)), 4)], "p_value": round(float(min(1.0, p)), 4)}


def stratified_rows(gold: list[str], per_label: int | None) -> list[int]:
    """The first `per_label` rows of each label, in locked order (all rows when None)."""
    if not per_label:
        return list(range(len(gold)))
    seen: dict[str, int] = {}
    out = []
    for i, g in enumerate(gold):
        seen[g] = seen.get(g, 0) + 1
        if seen[g] <= per_label:
            out.append(i)
    return out


def sample_rows(n: int, max_rows: int | None, seed: int = 0) -> list[int]:
    idx = list(range(n))
    if max_rows and n > max_rows:
        idx = sorted(random.Random(seed).sample(idx, max_rows))
    return idx


# ---------------------------------------------------------------- any OpenAI-compatible endpoint

def parse_label(raw: str, labels: list[str]) -> str:
    """A label from an answer: the bare label (a served student), {"label": ...} (a teacher), or the
    longest label named in the text; `<invalid>` otherwise."""
    s = (raw or "").strip()
    if s in labels:
        return s
    try:
        obj = json.loads(s)
        if isinstance(obj, dict) and obj.get("label") in labels:
            return obj["label"]
    except json.JSONDecodeError:
        pass
    found = [lab for lab in labels if lab in s]
    return max(found, key=len) if found else "<invalid>"


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

    if spec.type != "classification":
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
