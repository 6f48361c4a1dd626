"""DPO on top of the SFT adapter with TRL's DPOTrainer; only the trained adapter is saved.

The policy starts as the SFT adapter (loaded trainable). TRL then adds a frozen copy of it named
`ref` and computes the reference log-probs by switching to that copy: the reference is the SFT
policy itself, as in the DPO paper, with no second model in memory. (Passing a fresh
`peft_config` instead would make the reference "adapter disabled", i.e. the pre-SFT base, against
which the SFT adapter already has a huge margin, so the loss starts near zero and DPO barely
trains.) The `ref` copy is excluded when saving (`selected_adapters=["default"]`).

DPO's default lr (1e-6) is too low for LoRA and 1e-4 hurt greedy accuracy in a probe
(54/64 -> 41/64); 2e-5 with beta 0.1 for one epoch is the conservative default, and the caller
keeps SFT unless DPO scores better on validation rows.
"""
from __future__ import annotations

import time
from pathlib import Path

import datasets

from distilforge.errors import DataError
from distilforge.spec import Training
from training import common


def dpo_config(t: Training, base_dir: str, sft_adapter: str) -> dict:
    """Everything that changes what `train_dpo(t, base_dir, sft_adapter, ...)` produces (hashed into
    the stage fingerprint): `t` is the spec's `training` block, DPO's own fields are `t.dpo`."""
    d = t.dpo
    return common.run_config(t, base_dir, batch_size=d.batch_size or t.batch_size, sft_adapter=sft_adapter,
                             beta=d.beta, loss_type=d.loss_type, epochs=d.epochs, learning_rate=d.learning_rate)


def dpo_rows(ds: datasets.Dataset) -> datasets.Dataset:
    missing = {"prompt", "chosen", "rejected"} - set(ds.column_names)
    if missing:
        raise DataError(f"preference data lacks column(s) {', '.join(sorted(missing))}")
    return ds.select_columns(["prompt", "chosen", "rejected"])


def train_dpo(cfg: Training, base_dir: str, sft_adapter: str, pairs: datasets.Dataset, out_dir: str | Path, *,
              resume: bool = False, fingerprint: str = "", callbacks: list | None = None,
              tb_dir: Path | None = None) -> dict:
    """Train the SFT adapter further with DPO into `out_dir/adapter`; return log history and timings.

    `cfg`: the spec's `training` block; DPOConfig is built straight from it (`cfg.dpo`).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, set_seed
    from trl import DPOConfig, DPOTrainer

    from distilforge.models import load_tokenizer

    out_dir = Path(out_dir)
    start = common.prepare_checkpoints(out_dir, fingerprint or "unversioned", resume)
    dev = common.resolve_device(cfg.device)
    set_seed(cfg.seed)
    d = cfg.dpo
    tok = load_tokenizer(sft_adapter)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dev["dtype"])
    model = PeftModel.from_pretrained(base, sft_adapter, is_trainable=True)
    args = DPOConfig(
        **common.trainer_args(cfg, out_dir, epochs=d.epochs, learning_rate=d.learning_rate,
                              batch_size=d.batch_size or cfg.batch_size),
        beta=d.beta,
        loss_type=[d.loss_type],
        max_length=cfg.max_length,
    )
    with common.tensorboard_dir(tb_dir if cfg.tensorboard else None):
        trainer = DPOTrainer(model=model, args=args, train_dataset=dpo_rows(pairs), processing_class=tok,
                             callbacks=callbacks)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=start)
    seconds = time.time() - t0
    common.save_adapter(trainer.model, tok, out_dir / "adapter")
    return {"adapter": str(out_dir / "adapter"), "seconds": round(seconds, 2), "train_loss": result.training_loss,
            "steps": result.global_step, "log_history": trainer.state.log_history,
            "config": dpo_config(cfg, base_dir, sft_adapter),
            "pairs": len(pairs), "resumed_from": Path(start).name if start else None, "device": dev["device"]}
