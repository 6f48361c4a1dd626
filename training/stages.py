"""The train stage: contamination gate, LoRA SFT, optional DPO, keep the better, merge, model card.

Layout of RUN/train:
    sft/{checkpoints,adapter,done.json}   dpo/{checkpoints,adapter,done.json}   tb/{sft,dpo}
    adapter/    the kept adapter (what eval calls `student`)
    merged/     optional, the kept adapter folded into the base
    README.md   model card (rewritten with held-out metrics by eval)

DPO must not silently make the student worse, so when it runs a validation split is carved from
the training rows (stratified, deterministic) before SFT; both adapters are scored on it by label
likelihood and DPO is kept only if it is better. The choice is made here, on training-side rows,
not on the locked held-out set, so the held-out score of the kept student is not selected on.
With no validation rows (tiny runs) SFT is kept: nothing may be chosen by looking at the held-out set.

Every row's `prompt` (SFT rows and preference pairs alike) is rebuilt from its text with
`student.prompt` before anything below sees it; the mode and the exact system text are in the
stage's fingerprint and its manifest (`prompt`, `system_prompt`), which eval reads to score the
adapter with the prompt it was trained with.

The contamination gate sees exactly what the trainers will see: every string of every trained
column (prompt, completion, chosen, rejected, messages, text) of the dataset files read, and
those files are hashed again here: a dataset edited after its stage recorded it is refused (the
stage that wrote it is named), never skipped as unchanged or trained unchecked.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
from rich.console import Console

from curation.decontam import ContaminationError  # one class for the gate
from distilforge.atomic import atomic_copy_dir
from distilforge.layout import Run
from distilforge.manifest import Stage, dataset_hash, read_manifest, sha256_json, verified_output
from distilforge.sources import teacher_prefs, training_source, verified_source
from distilforge.spec import SpecError, TaskSpec, semantic_dump
from heldout.formats import task_format
from training import common

console = Console(stderr=True)


def contamination_gate(spec: TaskSpec, run: Path, *named: tuple[str, datasets.Dataset]) -> None:
    """Refuse to train on any string that overlaps the locked held-out set (n-gram or embedding match).

    `named`: (what, dataset) pairs; every trained column of each is checked in one pass, so the
    embedder loads once and strings shared by many rows (the system prompt) are embedded once.
    """
    from curation.decontam import assert_clean, trained_strings
    from heldout.lock import load_locked

    texts: list[str] = []
    ids: list[str] = []
    cols: list[str] = []
    # A label name as an answer (classification completions, DPO chosen/rejected) is the task's own
    # vocabulary, not data: "lost_or_stolen_card" sits at MiniLM cosine ~0.90 from real held-out
    # messages about lost cards, and checking it refused every row of the demo.
    vocabulary = set(spec.label_names)
    for what, ds in named:
        t, i, c = trained_strings(ds, what)
        keep = [k for k, s in enumerate(t) if s.strip() not in vocabulary]
        texts += [t[k] for k in keep]
        ids += [i[k] for k in keep]
        cols += [c[k] if what == "training" else f"{what}.{c[k]}" for k in keep]
    try:
        assert_clean(texts, ids, load_locked(Run(run).heldout), spec.curation, columns=cols)
    except ContaminationError as e:
        raise ContaminationError(f"refusing to train: {e}") from None


def validation_split(ds: datasets.Dataset, fraction: float, seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, validation): per label, `fraction` of its rows (labels with < 3 rows give none).

    Order within a label is by a hash of (seed, id), so the split is stable across reruns and
    does not depend on row order.
    """
    if fraction <= 0:
        return ds, ds.select([])
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(ds["label"]):
        by_label.setdefault(lab, []).append(i)
    ids = ds["id"]
    val: list[int] = []
    for idx in by_label.values():
        if len(idx) < 3:
            continue
        idx = sorted(idx, key=lambda i: hashlib.sha256(f"{seed}|{ids[i]}".encode()).hexdigest())
        val += idx[: max(1, round(fraction * len(idx)))]
    keep = sorted(set(range(len(ds))) - set(val))
    return ds.select(keep), ds.select(sorted(val))


def choose_adapter(spec: TaskSpec, base: str, sft: Path, dpo: Path, val: datasets.Dataset) -> dict:
    """Keep DPO only if it beats SFT on the validation rows (accuracy, then gold-label log-prob)."""
    from heldout import evaluate as ev

    if not task_format(spec).dpo_validation_split():
        return {"which": "sft", "selected_on": None,
                "why": f"no validation scorer for '{spec.type}' tasks yet: SFT kept; eval's comparison shows DPO"}
    if len(val) == 0:
        return {"which": "sft", "selected_on": None,
                "why": "no validation rows (fewer than 3 training rows per label) to compare on: SFT kept; "
                       "the held-out comparison in eval shows what DPO did"}
    labels, gold, prompts = spec.label_names, list(val["label"]), list(val["prompt"])
    res = {}
    for name, path in (("sft", sft), ("dpo", dpo)):
        preds, scores = ev.score_local(base, str(path), prompts, labels, f"validating {name}", return_scores=True)
        res[name] = {"accuracy": round(sum(p == g for p, g in zip(preds, gold)) / len(gold), 4),
                     "gold_logprob": round(ev.gold_logprob(scores, gold, labels), 4)}
    s, d = res["sft"], res["dpo"]
    better = (d["accuracy"], d["gold_logprob"]) > (s["accuracy"], s["gold_logprob"])
    which = "dpo" if better else "sft"
    why = (f"validation accuracy SFT {s['accuracy']:.3f} vs SFT+DPO {d['accuracy']:.3f} "
           f"(gold log-prob {s['gold_logprob']:.3f} vs {d['gold_logprob']:.3f}, n={len(val)}): "
           + ("DPO is better, kept" if better else "DPO is not better, SFT kept"))
    return {"which": which, "why": why, "selected_on": f"validation split of the training rows (n={len(val)})",
            "validation": res}


def _preferences(spec: TaskSpec, train: datasets.Dataset,
                 prefs: datasets.Dataset | None) -> tuple[datasets.Dataset, str]:
    if prefs is not None:
        return prefs, "generate/prefs"
    from curation.preferences import hard_negative_pairs

    pairs = hard_negative_pairs(train, spec)
    if len(pairs) == 0:
        raise SpecError(f"training.dpo: a '{spec.type}' task needs teacher preference pairs (generate/prefs); "
                        "no pairs can be built from its curated rows")
    return pairs, "curated rows, hard negatives (heldout/formats)"


def train_stage(spec: TaskSpec, run: Path, force: bool = False, resume: bool = False,
                callbacks: list | None = None) -> dict:
    """Train (or skip when inputs are unchanged). `resume`: continue finished sub-stages and checkpoints."""
    from distilforge.stage import scoped

    spec = scoped(spec, "train")  # only the spec blocks PIPELINE declares for this stage
    from heldout.lock import read_lock
    from training.dpo import dpo_config, train_dpo
    from distilforge.models import merge_adapter, student_base_dir
    from training.sft import sft_config, train_sft

    r = Run(run)
    t = spec.training
    # hashes recomputed from the files read below, never taken from the upstream manifest alone
    src, ds, h = verified_source(run)
    lock = read_lock(r.heldout)
    base_name = spec.student.base
    base = student_base_dir(base_name)
    prefs, ph = (None, None)
    if t.dpo.enabled and teacher_prefs(run):
        prefs, ph = verified_output(r.generate, "prefs", f"distilforge generate {run}")
    inputs = {src: h, "heldout": lock["sha256"], **({"prefs": ph} if ph else {})}
    semantic = semantic_dump(t)
    # The student's prompt is built here from each row's text (common.with_prompts), so what it is
    # (the mode and the exact system text) is part of what this stage is run with.
    mode = spec.student.prompt
    system = spec.system_prompt(mode)
    st = Stage(r.train, "train", inputs, {**semantic, "base_model": base_name, "student": semantic_dump(spec.student),
                                          "system_prompt": system})
    if st.is_current() and not force:
        console.print("train: inputs unchanged, skipped")
        return read_manifest(st.dir)
    if len(ds) == 0:
        raise ContaminationError(f"{training_source(run)[1]}: no rows to train on")
    stored = ds  # as the upstream stage saved it: its own `prompt` column is gated too (below)
    ds = common.with_prompts(ds, spec, mode)
    if prefs is not None:
        prefs = common.with_prompts(prefs, spec, mode)
    split = t.dpo.enabled and task_format(spec).dpo_validation_split() and "label" in ds.column_names
    train, val = validation_split(ds, t.dpo.val_fraction, t.seed) if split else (ds, ds.select([]))
    pairs, pairs_src = _preferences(spec, train, prefs) if t.dpo.enabled else (None, None)
    # (pairs made from the curated rows carry their rebuilt prompts; teacher pairs were rebuilt above)
    # The rebuilt rows are what is trained on; the stored ones are checked as well, so a dataset that
    # carries held-out text in a trained column is refused even where the rebuild would drop it
    # (strings both share are embedded once).
    contamination_gate(spec, run, ("training", stored), ("training", ds),
                       *([("preference", pairs)] if pairs is not None else []))
    st.begin()

    sft_dir = r.sft
    sft_fp = sha256_json({"data": dataset_hash(train), "cfg": {**sft_config(t, base), "base_model": base_name}})
    if resume and common.stage_done(sft_dir, sft_fp):
        sft = _done(sft_dir)
        console.print("train: SFT already finished for these inputs, reused")
    else:
        sft = train_sft(t, base, train, sft_dir, resume=resume, fingerprint=sft_fp, callbacks=callbacks,
                        tb_dir=r.train_tb / "sft")
        common.mark_done(sft_dir, sft_fp, sft)
    sft_hash = common.dir_hash(sft_dir / "adapter")
    kept = {"which": "sft", "why": "DPO disabled (training.dpo.enabled: false)", "selected_on": None}
    dpo_info = None
    if t.dpo.enabled:
        sft_adapter = str(sft_dir / "adapter")
        dpo_dir = r.dpo
        dpo_fp = sha256_json({"sft": sft_hash, "pairs": dataset_hash(pairs),
                              "cfg": {**dpo_config(t, base, sft_adapter), "base_model": base_name,
                                      "sft_adapter": None}})
        if resume and common.stage_done(dpo_dir, dpo_fp):
            dpo = _done(dpo_dir)
        else:
            dpo = train_dpo(t, base, sft_adapter, pairs, dpo_dir, resume=resume, fingerprint=dpo_fp,
                            callbacks=callbacks, tb_dir=r.train_tb / "dpo")
            common.mark_done(dpo_dir, dpo_fp, dpo)
        kept = choose_adapter(spec, base, sft_dir / "adapter", dpo_dir / "adapter", val)
        dpo_info = {"adapter": "dpo/adapter", "adapter_sha256": common.dir_hash(dpo_dir / "adapter"),
                    "log_history": dpo["log_history"], "seconds": dpo["seconds"], "train_loss": dpo["train_loss"],
                    "steps": dpo["steps"], "pairs": len(pairs), "pairs_source": pairs_src,
                    "beta": t.dpo.beta, "loss_type": t.dpo.loss_type, "reference": "frozen copy of the SFT adapter",
                    "resumed_from": dpo.get("resumed_from")}
    chosen = (r.dpo if kept["which"] == "dpo" else r.sft) / "adapter"
    atomic_copy_dir(chosen, r.adapter)
    if t.merge:
        merge_adapter(base, r.adapter, r.merged)
    seconds = sft["seconds"] + (dpo_info["seconds"] if dpo_info else 0)
    m = st.finish(data_source=src, data_sha256=h, rows=len(ds), train_rows=len(train), val_ids=list(val["id"]),
                  base_model=base_name, base_dir=base, prompt=mode, system_prompt=system,
                  adapter="adapter", adapter_sha256=common.dir_hash(r.adapter),
                  merged="merged" if t.merge else None, device=sft["device"],
                  train_seconds=round(seconds, 2), train_loss=sft["train_loss"], steps=sft["steps"],
                  log_history=sft["log_history"], heldout_lock_sha256=lock["sha256"],
                  sft={"adapter": "sft/adapter", "adapter_sha256": sft_hash, "seconds": sft["seconds"],
                       "tokens": sft.get("tokens"), "tokens_per_second": sft.get("tokens_per_second"),
                       "resumed_from": sft.get("resumed_from")},
                  dpo=dpo_info, kept=kept, training=t.model_dump(mode="json"), peak_rss_mb=common.peak_rss_mb())
    from distilforge.card import write_card

    write_card(run)
    msg = f"train: SFT {sft['steps']} steps on {len(train)} rows in {sft['seconds']:.0f}s, loss {sft['train_loss']:.3f}"
    if dpo_info:
        msg += f"; DPO {dpo_info['steps']} steps on {dpo_info['pairs']} pairs; kept {kept['which']}"
    console.print(msg)
    return m


def _done(d: Path) -> dict:
    import json

    return json.loads((d / "done.json").read_text())
