"""A standalone training YAML (`distilforge train RUN --config train.yaml`), Axolotl-style.

The file holds the fields of the task spec's `training` block (optionally under a `training:`
key, so a spec excerpt works too); whatever it sets is merged over the run's own block, so a
two-line file ("epochs: 1", "packing: true") is a valid config. It is validated by the same
pydantic class as the spec, so a typo is one line naming the field, before anything loads.

    base_model: smollm2-135m      # or a local HF folder, a .gguf file, a hub id (online only)
    epochs: 3
    learning_rate: 2.0e-4
    lr_scheduler: cosine
    batch_size: 8
    grad_accum: 1
    max_length: 192
    packing: true
    lora_r: 16
    lora_alpha: 32
    lora_target_modules: all-linear
    dpo: {enabled: true, beta: 0.1, loss_type: sigmoid, learning_rate: 2.0e-5, epochs: 1}
"""
from __future__ import annotations

from pathlib import Path

from distilforge.spec import SpecError, Training, _merge
from distilforge.yamlfile import read_yaml, validated


def load_training_config(path: str | Path, base: Training | None = None) -> Training:
    """The `training` block from `path`, merged over `base` (the spec's block; defaults if None)."""
    raw = read_yaml(path, "training config", SpecError)
    if set(raw) == {"training"} and isinstance(raw["training"], dict):
        raw = raw["training"]
    merged = _merge((base or Training()).model_dump(mode="json"), raw)
    return validated(Training, merged, str(path), SpecError)


def with_training(spec, training: Training):
    """A copy of the spec whose `training` block is `training`."""
    return spec.model_copy(update={"training": training})
