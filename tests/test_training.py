"""Training end to end on the tiny random Llama student: SFT -> DPO -> eval, resume, gate, merge.

Real parts only: TRL trainers, PEFT adapters, the locked Banking77 test rows and Banking77 TRAIN
texts read from ../shared at run time (three intents, a handful of rows each, so the file runs in
well under three minutes with OMP_NUM_THREADS=1).
"""
from __future__ import annotations

import csv
import shutil

import datasets
import pytest
import torch
import yaml

from conftest import BANKING77, TASK
from distilforge.manifest import Stage, read_manifest
from distilforge.spec import SpecError, parse_spec
from heldout.lock import load_locked, lock

LABELS = ["card_arrival", "pin_blocked", "exchange_rate"]
PER_LABEL = 6


def make_spec(prompt=None, **training):
    raw = yaml.safe_load(TASK.read_text())
    raw["labels"] = [lab for lab in raw["labels"] if lab["name"] in LABELS]
    raw["student"] = {"base": "tiny-random", **({"prompt": prompt} if prompt else {})}
    raw["heldout"]["max_per_label"] = 4
    raw["heldout"]["source"] = str(BANKING77 / "test.csv")
    raw["training"] = {"epochs": 2, "batch_size": 4, "max_length": 128, "save_steps": 1, "tensorboard": True,
                       **training}
    return parse_spec(raw)


def train_rows(spec) -> datasets.Dataset:
    """Curated-format rows from the Banking77 TRAIN split (never the test file)."""
    rows, seen = [], {}
    with open(BANKING77 / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            lab = r["category"]
            if lab in LABELS and seen.get(lab, 0) < PER_LABEL:
                seen[lab] = seen.get(lab, 0) + 1
                rows.append({"id": f"{lab}-{seen[lab]}", "label": lab, "text": r["text"], "strategy": "test",
                             "prompt": spec.student_prompt(r["text"]),
                             "completion": [{"role": "assistant", "content": lab}]})
    return datasets.Dataset.from_list(rows)


def make_run(path, spec, ds=None):
    lock(spec.heldout, spec, path / "heldout")
    st = Stage(path / "curate", "curate", {}, {}).begin()
    st.save("curated", ds if ds is not None else train_rows(spec))
    st.finish()
    return path


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    from heldout.stages import eval_stage
    from training.stages import train_stage

    spec = make_spec(merge=True, dpo={"enabled": True, "val_fraction": 0.34, "learning_rate": 5e-4})
    run = make_run(tmp_path_factory.mktemp("dpo") / "run", spec)
    tm = train_stage(spec, run)
    ev = eval_stage(spec, run, None)
    return spec, run, tm, ev


def test_sft_then_dpo_then_eval(dpo_run):
    spec, run, tm, ev = dpo_run
    assert tm["train_rows"] == 12 and len(tm["val_ids"]) == 6  # 2 of 6 rows per label held back
    assert any("loss" in e for e in tm["log_history"]) and any("loss" in e for e in tm["dpo"]["log_history"])
    assert tm["dpo"]["adapter_sha256"] != tm["sft"]["adapter_sha256"]  # DPO changed the adapter
    assert not (run / "train" / "dpo" / "adapter" / "ref").exists()  # frozen reference copy not shipped
    kept = tm["kept"]
    assert kept["which"] in ("sft", "dpo") and "validation" in kept["selected_on"] and kept["why"]
    v = kept["validation"]
    assert (kept["which"] == "dpo") == ((v["dpo"]["accuracy"], v["dpo"]["gold_logprob"])
                                        > (v["sft"]["accuracy"], v["sft"]["gold_logprob"]))
    assert tm["adapter_sha256"] == tm[kept["which"]]["adapter_sha256"]
    assert any((run / "train" / "tb" / "sft").rglob("events.out.tfevents*"))
    import json

    m = json.loads((run / "eval" / "metrics.json").read_text())
    assert m["n"] == 12 and {"base", "student_sft", "student_dpo", "student"} <= set(m["models"])
    # the default short prompt, recorded by train; every adapter scored with it, the base with the full one
    assert tm["prompt"] == "short" and tm["system_prompt"] == spec.name
    assert {k: v["prompt"] for k, v in m["models"].items()} == {"base": "full", "student_sft": "short",
                                                                "student_dpo": "short", "student": "short"}
    assert m["models"]["student"]["kept"]["which"] == kept["which"]
    assert m["models"]["student"]["correct"] == m["models"][f"student_{kept['which']}"]["correct"]
    lo, hi = m["models"]["student_dpo"]["accuracy_ci"]
    assert lo <= m["models"]["student_dpo"]["accuracy"] <= hi and "dpo_vs_sft" in m["comparisons"]
    card = (run / "train" / "README.md").read_text()
    assert "| student_dpo |" in card and m["heldout_sha256"] in card and tm["heldout_lock_sha256"] in card
    assert "Not evaluated yet" not in card and '"beta": 0.1' in card
    assert (run / "train" / "merged" / "README.md").exists()


def test_merged_model_matches_adapter(dpo_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec, run, tm, _ = dpo_run
    ids = torch.tensor([[1, 520, 3372, 314, 1083, 29, 2]])
    merged = AutoModelForCausalLM.from_pretrained(str(run / "train" / "merged"), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tm["base_dir"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(run / "train" / "adapter")).eval()
    with torch.no_grad():
        a, b = merged(ids).logits, adapted(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tm["base_dir"], dtype=torch.float32).eval()(ids).logits
    assert (a - plain).abs().max() > 1e-3  # the adapter is not a no-op, so the check below means something
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def _adapter_tensors(d):
    from safetensors.torch import load_file

    return load_file(str(d / "adapter_model.safetensors"))


class Crash(RuntimeError):
    pass


def test_resume_gives_the_same_adapter(tmp_path):
    from transformers import TrainerCallback

    from training.common import ResumeError
    from training.stages import train_stage

    class CrashAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                raise Crash("simulated crash")

    spec = make_spec()
    whole = make_run(tmp_path / "whole", spec)
    train_stage(spec, whole)
    cut = tmp_path / "cut"
    shutil.copytree(whole / "heldout", cut / "heldout")
    shutil.copytree(whole / "curate", cut / "curate")
    with pytest.raises(Crash):
        train_stage(spec, cut, callbacks=[CrashAt()])
    assert (cut / "train" / "sft" / "checkpoints" / "checkpoint-3").is_dir() and not read_manifest(cut / "train")
    tm = train_stage(spec, cut, resume=True)
    assert tm["sft"]["resumed_from"] == "checkpoint-3" and tm["steps"] == 10
    a, b = _adapter_tensors(whole / "train" / "adapter"), _adapter_tensors(cut / "train" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert any(not torch.equal(a[k], torch.zeros_like(a[k])) for k in a if "lora_B" in k)  # it trained
    # a checkpoint from another config is never continued
    with pytest.raises(ResumeError, match="different config"):
        train_stage(make_spec(learning_rate=1e-4), cut, resume=True)


def saw_rows(seen: list):
    """A TrainerCallback appending to `seen` the first tokenized row the trainer starts with, decoded."""
    from transformers import TrainerCallback

    class Saw(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            seen.append(kw["processing_class"].decode(kw["train_dataloader"].dataset[0]["input_ids"]))

    return Saw()


def test_train_builds_the_student_prompt_and_eval_scores_with_the_recorded_one(tmp_path, monkeypatch):
    """The prompt is the train stage's: built from each row's text with `student.prompt` (short by
    default), whatever the stored `prompt` column says; switching the mode retrains (never skips), and
    eval scores the adapter with the mode it was trained with, the base with the full prompt."""
    from heldout import evaluate as ev
    from heldout.stages import eval_stage
    from training.stages import train_stage

    short, full = make_spec(epochs=1), make_spec(prompt="full", epochs=1)
    assert short.student.prompt == "short" and short.system_prompt("short") == short.name
    full_system = full.system_prompt("full")
    assert "Answer with exactly one of" in full_system and full.system_prompt() == full_system
    rows = [{**r, "prompt": [{"role": "system", "content": "a stale prompt from generation"},
                             {"role": "user", "content": r["text"]}]} for r in train_rows(short).to_list()]
    run = make_run(tmp_path / "run", short, datasets.Dataset.from_list(rows))
    seen: list[str] = []
    tm = train_stage(short, run, callbacks=[saw_rows(seen)])
    assert short.name in seen[-1] and "Answer with" not in seen[-1] and "stale" not in seen[-1]
    assert rows[0]["text"] in seen[-1]
    assert (tm["prompt"], tm["system_prompt"]) == ("short", short.name)
    assert train_stage(short, run, callbacks=[saw_rows(seen)]) == tm and len(seen) == 1  # unchanged: skipped

    scored: list[tuple] = []
    real = ev.score_local

    def spy(model, adapter, prompts, labels, *a, **kw):
        scored.append((adapter, prompts[0][0]["content"]))
        return real(model, adapter, prompts, labels, *a, **kw)

    monkeypatch.setattr(ev, "score_local", spy)
    eval_stage(full, run, None)  # today's spec says full; the adapter was trained on short
    assert scored == [(None, full_system), (str(run / "train" / "adapter"), short.name)]
    import json

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert {k: v["prompt"] for k, v in metrics["models"].items()} == {"base": "full", "student": "short"}

    tm_full = train_stage(full, run, callbacks=[saw_rows(seen)])  # the mode changed: retrained, not skipped
    assert len(seen) == 2 and "Answer with exactly one of" in seen[-1] and "stale" not in seen[-1]
    assert tm_full["fingerprint"] != tm["fingerprint"] and tm_full["adapter_sha256"] != tm["adapter_sha256"]
    assert (tm_full["prompt"], tm_full["system_prompt"]) == ("full", full_system)
    scored.clear()
    eval_stage(full, run, None)  # the base is unchanged: its answers come from the first eval
    assert scored == [(str(run / "train" / "adapter"), full_system)]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["reused_answers"] == ["base-test"]
    assert {k: v["prompt"] for k, v in metrics["models"].items()} == {"base": "full", "student": "full"}


def test_contaminated_row_makes_train_refuse(tmp_path):
    from training.stages import ContaminationError, train_stage

    spec = make_spec()
    held = load_locked(make_run(tmp_path / "probe", spec) / "heldout")
    rows = train_rows(spec).to_list()
    rows[2] = {**rows[2], "id": "leak-1", "text": held["text"][5] + " thanks"}
    run = make_run(tmp_path / "run", spec, datasets.Dataset.from_list(rows))
    with pytest.raises(ContaminationError, match=rf"1 training row\(s\).*leak-1 \[text\]~{held['id'][5]}"):
        train_stage(spec, run)
    assert not (run / "train" / "sft").exists()  # refused before any training


def test_gate_reads_every_trained_column_and_names_it():
    """The strings checked are the ones the trainers see: conversation contents of every column."""
    from curation.decontam import trained_strings

    spec = make_spec()
    rows = train_rows(spec).to_list()[:2]
    rows[1]["completion"] = [{"role": "assistant", "content": "a planted answer"}]
    texts, ids, cols = trained_strings(datasets.Dataset.from_list(rows))
    got = set(zip(ids, cols, texts))
    system = spec.system_prompt(spec.student.prompt)  # the rows' prompts are the student's
    assert (rows[0]["id"], "prompt", system) in got and (rows[0]["id"], "prompt", rows[0]["text"]) in got
    assert (rows[1]["id"], "completion", "a planted answer") in got and (rows[0]["id"], "text", rows[0]["text"]) in got
    assert len(texts) == 2 * 4  # per row: system + user, the answer, the text


def test_gate_does_not_flag_label_answers_but_flags_held_out_answers(tmp_path):
    """A label name as the answer is the task's vocabulary: on the demo's 10 intents with all 400
    locked rows, `lost_or_stolen_card` sits at MiniLM cosine ~0.90 from real held-out messages, and the
    gate refused every row. The same column holding a held-out message is still refused."""
    from curation.decontam import ContaminationError
    from curation.embed import Embedder
    from curation.decontam import heldout_vectors
    from training.stages import contamination_gate

    raw = yaml.safe_load(TASK.read_text())
    raw["student"] = {"base": "tiny-random"}
    raw["heldout"]["source"] = str(BANKING77 / "test.csv")
    raw["curation"] = {**raw.get("curation", {}), "decontam_cosine": 0.90}  # the threshold it failed at
    spec = parse_spec(raw)
    run = tmp_path / "run"
    lock(spec.heldout, spec, run / "heldout")
    held = load_locked(run / "heldout")
    # the premise: some label name is as close to a held-out row as the cosine threshold
    emb = Embedder(spec.curation.embeddings.model)
    sims = emb.encode(spec.label_names) @ heldout_vectors(held, emb).T
    assert sims.max() >= 0.90
    rows = [{"id": f"r{i}", "label": lab, "text": f"question number {i} about my account, please help",
             "prompt": spec.student_prompt(f"question number {i} about my account, please help"),
             "completion": [{"role": "assistant", "content": lab}]} for i, lab in enumerate(spec.label_names)]
    contamination_gate(spec, run, ("training", datasets.Dataset.from_list(rows)))  # label answers pass
    rows[3]["completion"] = [{"role": "assistant", "content": held["text"][7]}]
    with pytest.raises(ContaminationError, match=r"r3 \[completion\]"):
        contamination_gate(spec, run, ("training", datasets.Dataset.from_list(rows)))


def test_preference_pairs_use_confusable_labels():
    from curation.preferences import confusable_labels, hard_negative_pairs

    spec = parse_spec(yaml.safe_load(TASK.read_text()))
    near = confusable_labels(spec, k=2)
    assert all(lab not in near[lab] and len(near[lab]) == 2 for lab in spec.label_names)
    # fee for a card payment vs fee for a cash withdrawal: the textbook confusion
    assert near["card_payment_fee_charged"][0] == "cash_withdrawal_charge"
    small = make_spec()
    pairs = hard_negative_pairs(train_rows(small), small)
    assert pairs.column_names == ["prompt", "chosen", "rejected", "id"] and len(pairs) == 3 * PER_LABEL
    for row, label in zip(pairs, train_rows(small)["label"]):
        assert row["chosen"] == [{"role": "assistant", "content": label}]
        assert row["rejected"][0]["content"] in small.label_names and row["rejected"][0]["content"] != label


def test_training_config_file(tmp_path):
    from training.config import load_training_config

    base = make_spec().training
    p = tmp_path / "train.yaml"
    p.write_text("training:\n  epochs: 1\n  packing: true\n  dpo: {enabled: true, beta: 0.2}\n")
    t = load_training_config(p, base)
    assert (t.epochs, t.packing, t.dpo.enabled, t.dpo.beta, t.batch_size) == (1, True, True, 0.2, 4)
    p.write_text("epochs: 1\ndpo: {loss_type: nope}\n")
    with pytest.raises(SpecError, match=r"field 'dpo.loss_type': unknown DPO loss 'nope'"):
        load_training_config(p, base)
    p.write_text("learning_rat: 1e-4\n")
    with pytest.raises(SpecError, match=r"field 'learning_rat'"):
        load_training_config(p, base)
