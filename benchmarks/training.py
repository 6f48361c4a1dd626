"""Training benchmark (not a test): distilforge's SFT trainer vs a plain TRL script, same everything.

Same model (SmolLM2-135M-Instruct, embedded), same ~64 rows, same hyper-parameters (LoRA r16/α32
all-linear, lr 2e-4, batch 8, max_length 192, 1 epoch, seed 0), each in its own process so peak RSS
is that run's alone. Rows are built at run time from Banking77 TRAIN texts for the task's ten
intents, read from `../shared/data/banking77/train.csv` (never the test file; nothing stored).

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training.py
    ... benchmarks/training.py --modes plain distilforge --epochs 1 --rows 64

Modes:
  plain           the TRL script a user would write: SFTConfig(bf16=False, use_cpu=True) + LoraConfig,
                  everything else TRL's defaults (gradient checkpointing on)
  plain-nogc      the same with gradient checkpointing off (isolates that one knob)
  distilforge     training.sft.train_sft with the spec defaults (TensorBoard + checkpoints on)
  distilforge-packed   the same with `packing: true` (BFD packing, padding-free, block-diagonal mask)

Throughput = tokens the trainer processes (its tokenized dataset, identical across modes) × epochs
/ seconds inside `trainer.train()` (model load and tokenization excluded for every mode alike).
Goal: distilforge / plain >= 1.0; packed / plain >= 1.3.

The student's prompt (`student.prompt`, --prompts): the same ~48 rows trained by train_sft with
the `full` system prompt (instruction + the ten labels, today's teacher prompt) vs the `short` one
(the task name), then `short` with `packing: true` and with `padding_free: true`. Reported per
mode: tokens/row (mean prompt + completion tokens through the student's chat template) and
seconds per epoch; written to benchmarks/results/training_prompt.json.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/training.py --prompts

  prompt-full, prompt-short          train_sft, spec defaults, rows built with that prompt mode
  prompt-short-packed                short + `packing: true`
  prompt-short-padfree               short + `padding_free: true`
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAIN = ROOT / ".." / "shared" / "data" / "banking77" / "train.csv"
TASK = ROOT / "examples" / "banking77" / "task.yaml"
HP = dict(epochs=1, learning_rate=2e-4, batch_size=8, max_length=192, lora_r=16, lora_alpha=32, lora_dropout=0.05,
          seed=0)
PROMPT_MODES = ["prompt-full", "prompt-short", "prompt-short-packed", "prompt-short-padfree"]
PROMPT_OUT = ROOT / "benchmarks" / "results" / "training_prompt.json"


def rows(n: int, prompt: str = "full"):
    """`n` rows of the task's intents (round-robin quota per label) with the `prompt` mode's prompt.
    The older modes keep the full prompt they were measured with."""
    import datasets

    from distilforge.spec import load_spec

    spec = load_spec(TASK)
    labels, per = spec.label_names, -(-n // len(spec.label_names))
    out, seen = [], {}
    with open(TRAIN, newline="") as f:
        for r in csv.DictReader(f):
            lab = r["category"].lower() if r["category"].lower() in labels else r["category"]
            if lab in labels and seen.get(lab, 0) < per and len(out) < n:
                seen[lab] = seen.get(lab, 0) + 1
                out.append({"prompt": spec.student_prompt(r["text"], prompt),
                            "completion": [{"role": "assistant", "content": lab}]})
    return datasets.Dataset.from_list(out)


def tokens_per_row(ds) -> float:
    """Mean prompt + completion tokens of a row through the student's chat template (what SFT trains on)."""
    from distilforge.models import load_tokenizer, student_base_dir

    tok = load_tokenizer(student_base_dir("smollm2-135m"))
    n = [len(tok(tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=False), add_special_tokens=False).input_ids)
         for r in ds]
    return round(sum(n) / len(n), 1)


def run_plain(ds, out: Path, gc: bool) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from training.common import dataset_tokens
    from distilforge.models import student_base_dir

    base = student_base_dir("smollm2-135m")
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kw = {} if gc else {"gradient_checkpointing": False}
    args = SFTConfig(output_dir=str(out), num_train_epochs=HP["epochs"], learning_rate=HP["learning_rate"],
                     per_device_train_batch_size=HP["batch_size"], max_length=HP["max_length"], seed=HP["seed"],
                     bf16=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, **kw)
    peft = LoraConfig(r=HP["lora_r"], lora_alpha=HP["lora_alpha"], lora_dropout=HP["lora_dropout"],
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
    t0 = time.time()
    trainer.train()
    secs = time.time() - t0
    trainer.model.save_pretrained(str(out / "adapter"))
    return {"seconds": secs, "tokens": int(dataset_tokens(trainer.train_dataset) * HP["epochs"])}


def run_distilforge(ds, out: Path, packing: bool, padding_free: bool = False) -> dict:
    from distilforge.spec import Training
    from distilforge.models import student_base_dir
    from training.sft import train_sft

    t = Training(**{k: v for k, v in HP.items()}, packing=packing, padding_free=padding_free)
    res = train_sft(t, student_base_dir("smollm2-135m"), ds, out, tb_dir=out / "tb")
    return {"seconds": res["seconds"], "tokens": res["tokens"], "steps": res["steps"]}  # packing: fewer, fuller steps


def one(mode: str, n: int) -> dict:
    import torch

    from training.common import peak_rss_mb

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
    prompt = "short" if mode.startswith("prompt-short") else "full"
    ds = rows(n, prompt)
    with tempfile.TemporaryDirectory() as d:
        if mode.startswith("plain"):
            r = run_plain(ds, Path(d), gc=mode == "plain")
        else:
            r = run_distilforge(ds, Path(d), packing=mode.endswith("packed"), padding_free=mode.endswith("padfree"))
    return {"mode": mode, "rows": len(ds), "prompt": prompt, "tokens_per_row": tokens_per_row(ds), **r,
            "seconds_per_epoch": round(r["seconds"] / HP["epochs"], 2), "tokens_per_s": r["tokens"] / r["seconds"],
            "peak_rss_mb": peak_rss_mb()}


def prompt_summary(results: dict, rows_n: int, epochs: float) -> dict:
    """full vs short (tokens/row, s/epoch) and short vs its packed / padding-free variants."""
    full, short = results["prompt-full"], results["prompt-short"]
    out = {"rows": rows_n, "epochs": epochs, "threads": int(os.environ.get("OMP_NUM_THREADS") or 2),
           "student": "smollm2-135m", "task": str(TASK.relative_to(ROOT)),
           "hyper_parameters": {**HP}, "modes": results,
           "short_vs_full": {"tokens_per_row": [full["tokens_per_row"], short["tokens_per_row"]],
                             "tokens_ratio": round(short["tokens_per_row"] / full["tokens_per_row"], 3),
                             "seconds_per_epoch": [full["seconds_per_epoch"], short["seconds_per_epoch"]],
                             "speedup": round(full["seconds_per_epoch"] / short["seconds_per_epoch"], 2)}}
    for m in ("prompt-short-packed", "prompt-short-padfree"):
        if m in results:
            out[f"{m.removeprefix('prompt-')}_vs_short"] = {
                "seconds_per_epoch": [short["seconds_per_epoch"], results[m]["seconds_per_epoch"]],
                "speedup": round(short["seconds_per_epoch"] / results[m]["seconds_per_epoch"], 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["plain", "plain-nogc", "distilforge", "distilforge-packed"])
    ap.add_argument("--rows", type=int, default=None, help="rows (default 64; 48 with --prompts)")
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--prompts", action="store_true",
                    help=f"the student-prompt comparison ({', '.join(PROMPT_MODES)}; 48 rows unless --rows) "
                         f"written to {PROMPT_OUT.relative_to(ROOT)}")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.prompts:
        a.modes = PROMPT_MODES
    a.rows = a.rows or (48 if a.prompts else 64)
    HP["epochs"] = a.epochs
    if a.one:
        print("RESULT " + json.dumps(one(a.one, a.rows)), flush=True)
        return
    results = {}
    for mode in a.modes:
        p = subprocess.run([sys.executable, __file__, "--one", mode, "--rows", str(a.rows), "--epochs", str(a.epochs)],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if p.returncode or not line:
            sys.exit(f"{mode} failed:\n{p.stderr[-3000:]}")
        results[mode] = r = json.loads(line[7:])
        print(f"{mode:20s} {r['tokens_per_row']:6.1f} tok/row {int(r['tokens']):6d} tok in {r['seconds']:6.1f}s "
              f"= {r['tokens_per_s']:6.1f} tok/s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    if "plain" in results:
        ref = results["plain"]["tokens_per_s"]
        for mode, r in results.items():
            if mode != "plain":
                goal = 1.3 if mode.endswith("packed") else 1.0
                ratio = r["tokens_per_s"] / ref
                print(f"ratio {mode:20s} / plain = {ratio:.2f}  (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})")
    if a.prompts:
        from distilforge.atomic import atomic_write_json

        summary = prompt_summary(results, a.rows, a.epochs)
        atomic_write_json(PROMPT_OUT, summary)
        print(json.dumps({k: v for k, v in summary.items() if k.endswith("_vs_full") or k.endswith("_vs_short")}, indent=2))
        print(f"written {PROMPT_OUT}")
        return
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
