"""LoRA SFT of the student on `prompt`/`completion` rows with TRL's SFTTrainer.

Why these settings: conversational prompt/completion rows give completion-only loss (the
`messages` format also trains on the prompt and learned far worse in a probe: 15/64 vs 54/64);
LoRA needs lr ~1e-4..2e-4 (TRL's 2e-5 default barely moves an adapter); on CPU bf16 must be off
explicitly (TRL turns it on and then fails); KV cache off during training is the Trainer's
business, evaluation turns it back on.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets


@dataclass
class LoraSFTConfig:
    """Everything that changes what `train_sft` produces (hashed into the stage fingerprint)."""

    base_model: str
    epochs: float = 3
    learning_rate: float = 2e-4
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 256
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | str = "all-linear"
    seed: int = 0
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec, base_dir: str) -> "LoraSFTConfig":
        t = spec.training
        return cls(base_model=base_dir, epochs=t.epochs, learning_rate=t.learning_rate, batch_size=t.batch_size,
                   grad_accum=t.grad_accum, max_length=t.max_length, lora_r=t.lora_r, lora_alpha=t.lora_alpha,
                   lora_dropout=t.lora_dropout, lora_target_modules=t.lora_target_modules, seed=t.seed)


def sft_rows(ds: datasets.Dataset) -> datasets.Dataset:
    """Keep only what TRL needs: conversational `prompt` and `completion`."""
    missing = {"prompt", "completion"} - set(ds.column_names)
    if missing:
        raise ValueError(f"training data lacks column(s) {', '.join(sorted(missing))}")
    return ds.select_columns(["prompt", "completion"])


def train_sft(cfg: LoraSFTConfig, train: datasets.Dataset, out_dir: str | Path) -> dict:
    """Train a LoRA adapter; save it to `out_dir/adapter`; return log history and timings."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from training.models import load_tokenizer

    out_dir = Path(out_dir)
    cuda = torch.cuda.is_available()
    tok = load_tokenizer(cfg.base_model)
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.bfloat16 if cuda else torch.float32)
    args = SFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        bf16=cuda,
        fp16=False,
        use_cpu=not cuda,
        gradient_checkpointing=cfg.gradient_checkpointing,
        completion_only_loss=True,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **cfg.extra,
    )
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_rows(train), processing_class=tok,
                         peft_config=peft_cfg)
    t0 = time.time()
    result = trainer.train()
    seconds = time.time() - t0
    adapter = out_dir / "adapter"
    tmp = out_dir / f".adapter.tmp{os.getpid()}"
    trainer.model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    if adapter.exists():
        import shutil

        shutil.rmtree(adapter)
    os.replace(tmp, adapter)
    tokens = int(result.metrics.get("train_tokens", 0) or 0) if hasattr(result, "metrics") else 0
    return {"adapter": str(adapter), "seconds": round(seconds, 2), "train_loss": result.training_loss,
            "steps": result.global_step, "log_history": trainer.state.log_history, "config": asdict(cfg),
            "train_rows": len(train), "num_tokens": tokens}
