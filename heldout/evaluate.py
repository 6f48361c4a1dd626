"""Classification scorers: label likelihood for local models, the label question for the teacher,
accuracy with bootstrap CIs, paired comparisons (run by heldout/formats/classification.py).

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
from typing import TYPE_CHECKING

import numpy as np

from heldout.progress import progress

if TYPE_CHECKING:
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


def stratified_rows(gold: list[str], per_label: int | None, seed: int = 0) -> list[int]:
    """A seeded random `per_label` rows of each label, in locked order (all rows when None).

    Why random and not the first rows: the locked order is the source file's, and its first rows
    of a label need not be typical. On the Banking77 demo the SFT student scored 0.980 on the first
    10 test rows of each label and 0.877 on the other 300, so a teacher scored on the first rows
    was compared on an easier sample than the student's."""
    if not per_label:
        return list(range(len(gold)))
    by_label: dict[str, list[int]] = {}
    for i, g in enumerate(gold):
        by_label.setdefault(g, []).append(i)
    rng = random.Random(seed)
    out = [i for g in sorted(by_label) for i in
           (by_label[g] if len(by_label[g]) <= per_label else rng.sample(by_label[g], per_label))]
    return sorted(out)


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
