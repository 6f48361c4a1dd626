"""Held-out stages: lock (or verify an existing lock) and evaluate base / student / teacher."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from distilforge.manifest import Stage, read_manifest, sha256_json, verified_output
from distilforge.spec import TaskSpec
from heldout import evaluate as ev
from heldout.lock import HeldoutError, load_locked, lock, verify

if TYPE_CHECKING:
    from distilforge.teacher import Endpoint

console = Console(stderr=True)


def lock_stage(spec: TaskSpec, run: Path, force: bool = False) -> dict:
    """Lock once. An existing lock is verified, never silently replaced (that would bless an edit)."""
    from distilforge.stage import scoped

    spec = scoped(spec, "heldout")  # only the spec blocks PIPELINE declares for this stage
    r = Run(run)
    d = r.heldout
    if r.lock_json.exists() and not force:
        info = verify(spec.heldout, spec.label_names, d)
        console.print(f"held-out: verified {info['n']} locked rows (sha256 {info['sha256'][:12]})")
        return info
    info = lock(spec.heldout, spec.label_names, d)
    console.print(f"held-out: locked {info['n']} rows from {info['source']} (sha256 {info['sha256'][:12]})")
    return info


def _student_adapters(run: Path, tm: dict) -> dict[str, Path]:
    """{'student_sft': ..., 'student_dpo': ...} when DPO ran, else {'student': kept adapter}."""
    d = Run(run).train
    if tm.get("dpo"):
        return {"student_sft": d / tm["sft"]["adapter"], "student_dpo": d / tm["dpo"]["adapter"]}
    return {"student": d / tm.get("adapter", "adapter")}


def trained_prompt(spec: TaskSpec, train_m: dict) -> tuple[str, str]:
    """(mode, system text) the kept adapter was trained with, as the train stage recorded them.

    A manifest from before `student.prompt` existed was trained on the full prompt. The recorded
    text wins over today's spec: an adapter is scored (and exported) with what it learned on."""
    mode = train_m.get("prompt") or "full"
    return mode, train_m.get("system_prompt") or spec.system_prompt(mode)


def eval_stage(spec: TaskSpec, run: Path, endpoint: Endpoint | None = None, force: bool = False) -> dict:
    """Score on the verified held-out set; writes eval/metrics.json, a manifest, and the model card.

    With DPO, SFT and SFT+DPO are both scored; `student` is the adapter the train stage kept
    (chosen on its validation rows, never here), with a `kept` field saying which and why.

    Prompts: each adapter is scored with exactly the prompt it was trained with (`trained_prompt`);
    the base model and the teacher, never trained on this task, get the full prompt (instruction +
    label list), their only fair chance. Each model's `prompt` field in metrics.json says which.
    """
    from distilforge.stage import scoped

    spec = scoped(spec, "eval")  # only the spec blocks PIPELINE declares for this stage
    from distilforge.card import write_card
    from distilforge.models import student_base_dir

    r = Run(run)
    d = r.heldout
    info = verify(spec.heldout, spec.label_names, d)  # refuses on any change
    train_m = read_manifest(r.train)
    if not train_m:
        raise HeldoutError(f"{r.train}: no trained student (run `distilforge train` first)")
    base_name = train_m.get("base_model") or spec.student.base
    base = train_m.get("base_dir") if Path(train_m.get("base_dir") or "/nonexistent").exists() else None
    base = base or student_base_dir(base_name)  # the base the adapter was trained on, not today's spec
    adapters = _student_adapters(run, train_m)
    mode, student_system = trained_prompt(spec, train_m)
    cfg = {"eval": spec.eval.model_dump(), "teacher": spec.teacher.model if spec.eval.teacher else None,
           "labels": spec.label_names, "system": spec.system_prompt("full"), "student": base_name,
           "student_prompt": mode, "student_system": student_system}
    dev = _dev_split(r)  # the traffic stage's dev split (real inputs), scored next to the locked test set
    inputs = {"heldout": info["sha256"], "adapter": train_m["adapter_sha256"],
              **({"dpo_adapter": train_m["dpo"]["adapter_sha256"]} if train_m.get("dpo") else {}),
              **({"traffic_dev": dev[1]} if dev else {})}
    st = Stage(r.eval, "eval", inputs, cfg)
    if st.is_current() and not force:
        console.print("eval: inputs unchanged, skipped")
        return read_manifest(r.eval)
    st.begin()
    rows = load_locked(d)
    idx = ev.sample_rows(len(rows), spec.eval.max_rows)
    rows = rows.select(idx)
    gold, texts = list(rows["label"]), list(rows["text"])
    full = [spec.student_prompt(t, "full") for t in texts]
    trained = [[{"role": "system", "content": student_system}, {"role": "user", "content": t}] for t in texts]
    labels = spec.label_names
    models: dict[str, dict] = {}
    models["base"] = {**ev.summarize(ev.score_local(base, None, full, labels, "scoring base"), gold, labels),
                      "prompt": "full"}
    for name, path in adapters.items():
        models[name] = {**ev.summarize(ev.score_local(base, str(path), trained, labels, f"scoring {name}"), gold, labels),
                        "prompt": mode}
    kept = train_m.get("kept") or {"which": "sft", "why": "SFT only (trained before DPO support)", "selected_on": None}
    if "student" not in models:
        models["student"] = {**models[f"student_{kept['which']}"]}
    models["student"]["kept"] = kept
    if spec.eval.teacher and endpoint is not None:
        t_idx = ev.stratified_rows(gold, spec.eval.teacher_max_per_label)
        preds, tokens = ev.score_teacher(endpoint, spec.system_prompt("full"), [texts[i] for i in t_idx], labels,
                                         spec.teacher.structured_output, spec.teacher.timeout_s, spec.teacher.max_retries)
        models["teacher"] = {**ev.summarize(preds, [gold[i] for i in t_idx], labels), "prompt": "full", "tokens": tokens,
                             "model": endpoint.model, "rows": len(t_idx),
                             "row_ids": [rows[i]["id"] for i in t_idx] if len(t_idx) < len(gold) else None}
    comparisons = {}
    if "teacher" in models:
        t_pos = ev.stratified_rows(gold, spec.eval.teacher_max_per_label)
        comparisons["student_vs_teacher"] = {
            **ev.paired_bootstrap([models["student"]["correct"][i] for i in t_pos], models["teacher"]["correct"]),
            "rows": len(t_pos)}
    comparisons["student_vs_base"] = ev.paired_bootstrap(models["student"]["correct"], models["base"]["correct"])
    if "student_dpo" in models:
        comparisons["dpo_vs_sft"] = ev.paired_bootstrap(models["student_dpo"]["correct"], models["student_sft"]["correct"])
    metrics = {"n": len(gold), "labels": labels, "heldout_sha256": info["sha256"],
               "adapter_sha256": train_m["adapter_sha256"], "row_ids": list(rows["id"]),
               "models": models, "comparisons": comparisons,
               "per_label": {m: v["per_label"] for m, v in models.items()}}
    if dev and len(dev[0]):
        metrics["dev"] = _dev_scores(spec, dev, base, adapters.get("student") or adapters[f"student_{kept['which']}"],
                                     student_system)
    for m in models.values():  # predictions stay out of metrics.json; no held-out text anywhere
        m.pop("predictions", None)
    atomic_write_json(r.metrics, metrics)
    out = st.finish(n=len(gold), accuracy={k: v["accuracy"] for k, v in models.items()}, kept=kept,
                    metrics_sha256=sha256_json(metrics))
    write_card(run, metrics)
    print_table(metrics)
    return out


def _dev_split(r: Run):
    """(dev rows, hash) when the traffic stage wrote a dev split, re-hashed (an edited split is refused)."""
    m = read_manifest(r.traffic)
    if not m or "dev" not in (m.get("outputs") or {}):
        return None
    return verified_output(r.traffic, "dev", f"distilforge traffic {r.root}")


def _dev_scores(spec: TaskSpec, dev, base, student, student_system: str) -> dict:
    """Base and the kept student on the dev split. Its labels are the teacher's (or the user's gold):
    a different yardstick from the locked test set, so it is recorded and shown apart from it.
    Prompts as on the test set: the full one for the base, the trained one for the student."""
    ds, h = dev
    labels, gold = spec.label_names, list(ds["label"])
    source = ds["label_source"][0]
    full = [spec.student_prompt(t, "full") for t in ds["text"]]
    trained = [[{"role": "system", "content": student_system}, {"role": "user", "content": t}] for t in ds["text"]]
    out = {"what": f"dev ({source} labels)", "label_source": source, "n": len(ds), "dev_sha256": h,
           "row_ids": list(ds["id"])}
    for name, adapter, prompts in (("base", None, full), ("student", str(student), trained)):
        s = ev.summarize(ev.score_local(base, adapter, prompts, labels, f"scoring {name} on dev"), gold, labels)
        out[name] = {k: s[k] for k in ("accuracy", "accuracy_ci", "macro_f1")}
    # the student's answer per dev row (row_ids order; labels, no text): blind spots rank the dev
    # clusters by its errors and target the label pairs it confuses (labeling/dev_errors.py)
    out["student"]["predictions"] = s["predictions"]
    return out


def print_table(metrics: dict) -> None:
    t = Table(title=f"held-out accuracy (n={metrics['n']}, locked)")
    for col in ("model", "accuracy", "95% CI", "macro-F1"):
        t.add_column(col)
    for name in ("base", "teacher", "student_sft", "student_dpo", "student"):
        m = metrics["models"].get(name)
        if m:
            lo, hi = m["accuracy_ci"]
            shown = f"student (kept: {m['kept']['which']})" if name == "student" and m.get("kept") else name
            t.add_row(shown, f"{m['accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{m['macro_f1']:.3f}")
    Console().print(t)
    dev = metrics.get("dev")
    if dev:  # a separate table: another yardstick (real traffic, teacher or gold labels), not the locked test set
        t = Table(title=f"{dev['what']} accuracy (n={dev['n']}, real traffic; not the locked test set)")
        for col in ("model", "accuracy", "95% CI", "macro-F1"):
            t.add_column(col)
        for name in ("base", "student"):
            lo, hi = dev[name]["accuracy_ci"]
            t.add_row(name, f"{dev[name]['accuracy']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{dev[name]['macro_f1']:.3f}")
        Console().print(t)
