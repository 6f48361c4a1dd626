"""What every training method shares: device choice, Trainer arguments, checkpoints, adapter saves.

Each method (SFT, DPO) is a `train_*` function that builds its TRL config straight from the spec's
`training` block (distilforge.spec.Training), plus a `*_config` dict of what it trains with (hashed
into the stage fingerprint); this module keeps them short and identical where they should be:

* device: `auto` is CUDA + bf16 when a GPU is present, else fp32 on CPU with `bf16=False` set
  explicitly (TRL turns bf16 on by default and then fails on CPU);
* checkpoints live in `<stage>/checkpoints` next to a `fingerprint.json` of the config and data
  that produced them, so `--resume` can never continue a run from a different config;
* adapters are saved atomically (distilforge/atomic.py), only the trained `default` adapter (DPO
  on a PeftModel also carries a frozen `ref` copy that must not ship);
* every row's `prompt` is rebuilt from its text with the spec's `student.prompt` (`with_prompts`)
  before anything trains on it: the prompt is a training concern, so changing it retrains without
  regenerating, and the column the generator wrote is never what decides.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

from distilforge.atomic import atomic_path, atomic_write_json
from distilforge.manifest import sha256_file, sha256_json
from distilforge.errors import DataError, UserError


# The `training` fields every method runs with (its own fields follow; see `run_config`).
SHARED = ("lr_scheduler", "warmup_ratio", "batch_size", "grad_accum", "max_length", "seed", "device",
          "gradient_checkpointing", "save_steps", "save_total_limit", "logging_steps", "tensorboard")


def run_config(t, base_model: str, **method) -> dict:
    """What one method trains with: `base_model`, the shared fields of the training block `t`
    (a `distilforge.spec.Training`), then the method's own (`method` may override a shared one in
    place, e.g. DPO's batch size). Hashed into the stage fingerprint and recorded in done.json."""
    return {"base_model": base_model, **{k: getattr(t, k) for k in SHARED}, **method}


def with_prompts(ds, spec, mode: str | None = None):
    """`ds` with every row's `prompt` rebuilt by `spec.student_prompt(text, mode)` (mode None:
    `spec.student.prompt`); other columns (completion, chosen, rejected) untouched, order kept.

    The text is the row's `text` column, else the last user message of its `prompt` (teacher
    preference pairs carry no `text`). A row with neither is one error line naming it."""
    cols = ds.column_names
    if len(ds) == 0:
        return ds
    if "text" in cols:
        texts = list(ds["text"])
    elif "prompt" in cols:
        texts = [next((m.get("content") for m in reversed(p or []) if isinstance(m, dict) and m.get("role") == "user"), None)
                 for p in ds["prompt"]]
    else:
        raise DataError("training data lacks a `text` column (or a `prompt` to take the text from)")
    ids = ds["id"] if "id" in cols else list(range(len(ds)))
    bad = next((i for i, t in zip(ids, texts) if not isinstance(t, str) or not t), None)
    if bad is not None:
        raise DataError(f"training row {bad}: no text to build its prompt from")
    prompts = [spec.student_prompt(t, mode) for t in texts]
    out = ds.remove_columns("prompt") if "prompt" in cols else ds
    return out.add_column("prompt", prompts).select_columns(cols if "prompt" in cols else cols + ["prompt"])


class ResumeError(UserError, RuntimeError):
    """`--resume` found checkpoints from a different config or data."""


def resolve_device(device: str = "auto") -> dict:
    """{'device', 'dtype', 'bf16', 'use_cpu'} for `auto` | `cpu` | `cuda`."""
    import torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("training.device is 'cuda' but no CUDA device is visible")
    on_gpu = cuda and device != "cpu"
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    return {"device": "cuda" if on_gpu else "cpu", "dtype": torch.bfloat16 if bf16 else torch.float32,
            "bf16": bf16, "use_cpu": not on_gpu}


def trainer_args(cfg, out_dir: Path, *, epochs: float, learning_rate: float, batch_size: int) -> dict:
    """Keyword arguments common to SFTConfig and DPOConfig (both are TrainingArguments); `cfg`: the
    training block."""
    dev = resolve_device(cfg.device)
    return dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=["tensorboard"] if cfg.tensorboard else [],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=dev["bf16"],
        fp16=False,
        use_cpu=dev["use_cpu"],
        activation_checkpointing=cfg.gradient_checkpointing,  # the new name of gradient_checkpointing
        dataloader_num_workers=0,
        disable_tqdm=False,  # the progress bar
    )


@contextlib.contextmanager
def tensorboard_dir(path: Path | None) -> Iterator[None]:
    """TensorBoard's callback reads its folder from the environment when the Trainer is built."""
    key = "TENSORBOARD_LOGGING_DIR"
    before = os.environ.get(key)
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def prepare_checkpoints(stage_dir: Path, fingerprint: str, resume: bool) -> str | None:
    """Checkpoint to resume from (or None); a fresh start wipes old checkpoints first.

    A checkpoint written under another fingerprint is refused: continuing it would mix two configs
    into one adapter that neither describes.
    """
    from transformers.trainer_utils import get_last_checkpoint

    ck = stage_dir / "checkpoints"
    marker = ck / "fingerprint.json"
    if resume and ck.is_dir():
        last = get_last_checkpoint(str(ck))
        if last:
            got = json.loads(marker.read_text()).get("fingerprint") if marker.exists() else None
            if got != fingerprint:
                raise ResumeError(f"{ck}: checkpoints were written by a different config or data; "
                                  "rerun without --resume to start over")
            return last
    shutil.rmtree(ck, ignore_errors=True)
    ck.mkdir(parents=True, exist_ok=True)
    atomic_write_json(marker, {"fingerprint": fingerprint})
    return None


def stage_done(stage_dir: Path, fingerprint: str) -> bool:
    """True when this sub-stage already finished with the same fingerprint (resume skips it)."""
    p = stage_dir / "done.json"
    return p.exists() and (stage_dir / "adapter").is_dir() and json.loads(p.read_text()).get("fingerprint") == fingerprint


def mark_done(stage_dir: Path, fingerprint: str, result: dict) -> None:
    atomic_write_json(stage_dir / "done.json", {"fingerprint": fingerprint, **result})


def save_adapter(model, tok, dest: Path) -> None:
    """Atomically save only the trained `default` adapter (never DPO's frozen `ref` copy)."""
    with atomic_path(dest, is_dir=True) as tmp:
        model.save_pretrained(str(tmp), selected_adapters=["default"])
        tok.save_pretrained(str(tmp))


def dir_hash(d: Path) -> str:
    """Hash of a model folder's files (names + contents); what eval keys its fingerprint on."""
    return sha256_json({p.name: sha256_file(p) for p in sorted(Path(d).iterdir()) if p.is_file()})


def dataset_tokens(ds) -> int:
    """Tokens the trainer actually processes per epoch (after truncation / packing)."""
    if ds is None or "input_ids" not in ds.column_names:
        return 0
    return int(sum(len(x) for x in ds["input_ids"]))


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
