"""Score base, student and teacher on the locked held-out set — and refuse if it changed.

Local models are scored by label likelihood: for each row, the log-probability of every label
string (plus the end-of-turn token) after the student's prompt; the argmax is the prediction.
No free-text parsing, so no "unparseable answer" failures can flatter or punish a model.
The prompt is run once per row and its KV cache is shared by all candidate labels.
The teacher is scored through its endpoint with output constrained to the label set.
Every headline number carries a bootstrap 95 % CI.
"""
from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path

import numpy as np


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


def score_local(model_path: str, adapter: str | None, prompts: list[list[dict]], labels: list[str],
                desc: str = "scoring", return_scores: bool = False):
    """Label-likelihood prediction for each prompt with a local HF model (+ optional LoRA adapter).

    `return_scores`: also return the [rows, labels] matrix of summed label log-probabilities
    (used to break accuracy ties when choosing between two adapters).
    """
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM

    from training.models import load_tokenizer

    tok = load_tokenizer(adapter or model_path)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # fp32 everywhere: scores comparable across devices
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.to(dev).eval()
    end = tok.eos_token or ""
    label_ids = [tok(lab + end, add_special_tokens=False).input_ids for lab in labels]
    width = max(len(x) for x in label_ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    cand = torch.tensor([x + [pad] * (width - len(x)) for x in label_ids], device=dev)
    lens = torch.tensor([len(x) for x in label_ids], device=dev)
    mask = torch.arange(width, device=dev)[None, :] < lens[:, None]
    rows = [tok(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False), add_special_tokens=False).input_ids
            for m in prompts]
    # The system prompt (instruction + label list) is the same for every row: run it once.
    common = rows[0]
    for r in rows[1:]:
        k = next((i for i, (a, b) in enumerate(zip(common, r)) if a != b), min(len(common), len(r)))
        common = common[:k]
    common = common[: max(len(common) - 1, 0)]  # every row keeps at least one token of its own
    preds, scores = [], []
    with torch.inference_mode(), Progress(transient=True) as bar:
        task = bar.add_task(desc, total=len(prompts))
        prefix = model(input_ids=torch.tensor([common], device=dev), use_cache=True).past_key_values if common else None
        for ids in rows:
            past = copy.deepcopy(prefix) if prefix is not None else None
            own = torch.tensor([ids[len(common):]], device=dev)
            pos = torch.arange(len(common), len(ids), device=dev)[None, :]
            out = model(input_ids=own, past_key_values=past, position_ids=pos, use_cache=True)
            past = out.past_key_values
            past.batch_repeat_interleave(len(labels))
            first = torch.log_softmax(out.logits[0, -1].float(), -1)[cand[:, 0]]
            pos = torch.arange(len(ids), len(ids) + width, device=dev)[None, :].expand(len(labels), -1)
            nxt = model(input_ids=cand, past_key_values=past, position_ids=pos, use_cache=True).logits
            lp = torch.log_softmax(nxt[:, :-1].float(), -1).gather(-1, cand[:, 1:, None])[..., 0]
            score = first + (lp * mask[:, 1:]).sum(-1)
            preds.append(labels[int(score.argmax())])
            scores.append(score.float().cpu().numpy())
            bar.advance(task)
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


def score_teacher(endpoint, system_prompt: str, texts: list[str], labels: list[str], structured: str,
                  timeout: float = 120, max_retries: int = 4) -> tuple[list[str], dict]:
    """Teacher predictions through its OpenAI-compatible endpoint, constrained to the label set."""
    from openai import OpenAI
    from rich.progress import Progress

    client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, timeout=timeout, max_retries=max_retries)
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": labels}}, "required": ["label"]}
    if structured == "auto":
        structured = "llama_cpp" if endpoint.kind == "embedded" else "openai"
    if structured == "llama_cpp":
        fmt = {"type": "json_object", "schema": schema}
    elif structured == "openai":
        fmt = {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}}
    else:
        fmt = None
    preds, p_tok, c_tok, t0 = [], 0, 0, time.time()
    with Progress(transient=True) as bar:
        task = bar.add_task("scoring teacher", total=len(texts))
        for text in texts:
            kw = {"extra_body": {"response_format": fmt}} if fmt else {}
            r = client.chat.completions.create(
                model=endpoint.model, temperature=0, max_tokens=24,
                messages=[{"role": "system", "content": system_prompt + ' Reply as JSON: {"label": "<label>"}'},
                          {"role": "user", "content": text}], **kw)
            raw = r.choices[0].message.content or ""
            try:
                pred = json.loads(raw).get("label", "")
            except (json.JSONDecodeError, AttributeError):
                pred = next((lab for lab in labels if lab in raw), "")
            preds.append(pred if pred in labels else "<invalid>")
            if r.usage:
                p_tok += r.usage.prompt_tokens
                c_tok += r.usage.completion_tokens
            bar.advance(task)
    return preds, {"prompt": p_tok, "completion": c_tok, "calls": len(texts), "seconds": round(time.time() - t0, 2)}


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


def write_metrics(path: Path, metrics: dict) -> None:
    from distilforge.manifest import atomic_write_json

    atomic_write_json(path, metrics)
