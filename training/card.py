"""The model card (`RUN/train/README.md`): what was trained, on what, how, and how well.

Written by the train stage (no metrics yet) and rewritten by eval once the locked held-out set
is scored, so the card never shows numbers for an adapter other than the one beside it: eval's
metrics carry the adapter hash they were computed for, and the card only shows them when it
matches the train manifest's. Provenance is hashes, never rows (no held-out text leaves the lock).
"""
from __future__ import annotations

import json
from pathlib import Path

from distilforge.manifest import atomic_write_text, read_manifest

_ORDER = ("base", "teacher", "student_sft", "student_dpo", "student")


def _provenance(run: Path, tm: dict) -> list[tuple[str, str]]:
    rows = [("training data", f"{tm.get('data_source')} ({tm.get('rows')} rows, {tm.get('train_rows')} trained on, "
                              f"{len(tm.get('val_ids') or [])} held back for validation)"),
            ("training data sha256", str(tm.get("data_sha256") or (tm.get("inputs") or {}).get(tm.get("data_source")))),
            ("held-out lock sha256", str(tm.get("heldout_lock_sha256")))]
    for stage in ("generate", "curate", "review/export"):
        m = read_manifest(run / stage)
        if m:
            outs = ", ".join(f"{k}: {v.get('rows')} rows sha256 {str(v.get('sha256'))[:16]}…"
                             for k, v in (m.get("outputs") or {}).items())
            label = "approved-export id" if stage == "review/export" else f"{stage} manifest"
            rows.append((label, f"fingerprint {m.get('fingerprint')}" + (f" ({outs})" if outs else "")))
    if tm.get("dpo"):
        rows.append(("preference pairs", f"{tm['dpo'].get('pairs')} from {tm['dpo'].get('pairs_source')}"))
    return rows


def _metrics_table(metrics: dict) -> str:
    models = metrics.get("models") or {}
    lines = ["| model | accuracy | 95% CI | macro-F1 |", "|---|---|---|---|"]
    for k in [k for k in _ORDER if k in models]:
        m = models[k]
        lo, hi = m.get("accuracy_ci") or [None, None]
        lines.append(f"| {k} | {m.get('accuracy', 0):.3f} | [{lo:.3f}, {hi:.3f}] | {m.get('macro_f1', 0):.3f} |")
    out = "\n".join(lines)
    cmp_ = metrics.get("comparisons") or {}
    if cmp_:
        out += "\n\nPaired bootstrap (difference of accuracies on the same rows):\n\n"
        out += "\n".join(f"- {k}: {v['diff']:+.3f}, 95% CI [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}], p = {v['p_value']}"
                         for k, v in cmp_.items())
    return out


def render_card(run: Path, metrics: dict | None = None) -> str:
    tm = read_manifest(run / "train") or {}
    kept = tm.get("kept") or {}
    hp = tm.get("training") or {}
    lines = [f"# distilforge student: {run.name}", "",
             f"LoRA adapter for `{tm.get('base_model')}` trained by distilforge "
             f"(SFT{' + DPO' if tm.get('dpo') else ''}); kept: **{kept.get('which', 'sft')}** — {kept.get('why', '')}.",
             "", "## Base model", "", f"- name: `{tm.get('base_model')}`", f"- resolved: `{tm.get('base_dir')}`",
             f"- device: {tm.get('device')}; train time {tm.get('train_seconds')} s", "",
             "## Files", "", "- `adapter/`: the kept adapter (PEFT); `sft/adapter/`"
             + (", `dpo/adapter/`" if tm.get("dpo") else "") + ": each stage's adapter",
             *(["- `merged/`: the kept adapter merged into the base (`merge_and_unload`)"] if tm.get("merged") else []),
             f"- adapter sha256: `{tm.get('adapter_sha256')}`", "",
             "## Data provenance", ""]
    lines += [f"- {k}: {v}" for k, v in _provenance(run, tm)]
    lines += ["", "## Hyper-parameters", "", "```json", json.dumps(hp, indent=2), "```", "", "## Held-out metrics", ""]
    if metrics and metrics.get("adapter_sha256") == tm.get("adapter_sha256"):
        lines += [f"Locked held-out set, n = {metrics.get('n')}, sha256 `{metrics.get('heldout_sha256')}`; "
                  "label-likelihood scoring; bootstrap 95% CIs.", "", _metrics_table(metrics)]
    else:
        lines.append("Not evaluated yet: run `distilforge eval RUN`.")
    return "\n".join(lines) + "\n"


def write_card(run: Path, metrics: dict | None = None) -> Path:
    """(Re)write RUN/train/README.md (and merged/README.md when there is a merged model)."""
    run = Path(run)
    text = render_card(run, metrics)
    atomic_write_text(run / "train" / "README.md", text)
    if (run / "train" / "merged").is_dir():
        atomic_write_text(run / "train" / "merged" / "README.md", text)
    return run / "train" / "README.md"
