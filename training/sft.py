"""LoRA SFT of the student on `prompt`/`completion` rows with TRL's SFTTrainer.

Why these settings: conversational prompt/completion rows give completion-only loss (the
`messages` format also trains on the prompt and learned far worse in a probe: 15/64 vs 54/64);
LoRA needs lr ~1e-4..2e-4 (TRL's 2e-5 default barely moves an adapter); on CPU bf16 must be off
explicitly (TRL turns it on and then fails); KV cache off during training is the Trainer's
business, evaluation turns it back on. Packing uses TRL's best-fit-decreasing strategy, which is
padding-free: transformers turns the packed `position_ids` into a block-diagonal mask, so rows
packed together never attend to one another.
"""
from __future__ import annotations

import time
from pathlib import Path

import datasets

from distilforge.errors import DataError
from distilforge.spec import Training
from training import common

# SFT's own fields of the training block, after the shared ones (training/common.py).
OWN = ("epochs", "learning_rate", "packing", "padding_free", "lora_r", "lora_alpha", "lora_dropout",
       "lora_target_modules")


def sft_config(t: Training, base_dir: str) -> dict:
    """Everything that changes what `train_sft(t, base_dir, ...)` produces (hashed into the stage
    fingerprint): `t` is the spec's `training` block (a `distilforge.spec.Training`)."""
    return common.run_config(t, base_dir, **{k: getattr(t, k) for k in OWN})


def sft_rows(ds: datasets.Dataset) -> datasets.Dataset:
    """Keep only what TRL needs: conversational `prompt` and `completion`."""
    missing = {"prompt", "completion"} - set(ds.column_names)
    if missing:
        raise DataError(f"training data lacks column(s) {', '.join(sorted(missing))}")
    return ds.select_columns(["prompt", "completion"])


def lora_config(cfg):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")


def train_sft(cfg: Training, base_dir: str, train: datasets.Dataset, out_dir: str | Path, *, resume: bool = False,
              fingerprint: str = "", callbacks: list | None = None, tb_dir: Path | None = None) -> dict:
    """Train a LoRA adapter on `base_dir` into `out_dir/adapter`; return log history, tokens and timings.

    `cfg`: the spec's `training` block; SFTConfig is built straight from it.

    `resume`: continue from the last checkpoint in `out_dir/checkpoints` written under the same
    `fingerprint` (optimizer, scheduler, RNG and data order are restored, so the final adapter
    equals an uninterrupted run's).
    """
    import torch
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from distilforge.models import load_tokenizer

    out_dir = Path(out_dir)
    start = common.prepare_checkpoints(out_dir, fingerprint or "unversioned", resume)
    dev = common.resolve_device(cfg.device)
    set_seed(cfg.seed)  # LoRA init happens before the Trainer seeds anything
    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dev["dtype"])
    packing_kw = {"packing": True, "packing_strategy": "bfd"} if cfg.packing else {}
    args = SFTConfig(
        **common.trainer_args(cfg, out_dir, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
                              batch_size=cfg.batch_size),
        # padding-free without packing cannot truncate (TRL refuses max_length there)
        max_length=None if cfg.padding_free and not cfg.packing else cfg.max_length,
        padding_free=cfg.padding_free,
        completion_only_loss=True,
        **packing_kw,
    )
    with common.tensorboard_dir(tb_dir if cfg.tensorboard else None):
        trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows(train), processing_class=tok,
                             peft_config=lora_config(cfg), callbacks=callbacks)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=start)
    seconds = time.time() - t0
    common.save_adapter(trainer.model, tok, out_dir / "adapter")
    per_epoch = common.dataset_tokens(trainer.train_dataset)
    tokens = int(per_epoch * cfg.epochs)
    return {"adapter": str(out_dir / "adapter"), "seconds": round(seconds, 2), "train_loss": result.training_loss,
            "steps": result.global_step, "log_history": trainer.state.log_history,
            "config": sft_config(cfg, base_dir),
            "train_rows": len(train), "tokens": tokens, "resumed_from": Path(start).name if start else None,
            "tokens_per_second": round(tokens / seconds, 1) if seconds and not start else None,
            "device": dev["device"], "torch_threads": torch.get_num_threads()}
