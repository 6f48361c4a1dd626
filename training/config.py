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

from distilforge.spec import SpecError, TaskSpec, Training, _merge
from distilforge.yamlfile import read_yaml, validated


def _read(path: str | Path) -> dict:
    raw = read_yaml(path, "training config", SpecError)
    if set(raw) == {"training"} and isinstance(raw["training"], dict):
        raw = raw["training"]
    return raw


def load_training_config(path: str | Path, base: Training | None = None) -> Training:
    """The `training` block from `path`, merged over `base` (the spec's block; defaults if None).
    A `base_model` key is the student's base (`student.base`): `apply_training_file` applies it."""
    raw = {k: v for k, v in _read(path).items() if k != "base_model"}
    merged = _merge((base or Training()).model_dump(mode="json"), raw)
    return validated(Training, merged, str(path), SpecError)


def apply_training_file(spec: TaskSpec, path: str | Path):
    """The spec with `path`'s training block merged over its own (and `base_model`, if the file
    sets one, as `student.base`)."""
    out = with_training(spec, load_training_config(path, spec.training))
    base = _read(path).get("base_model")
    if base is not None:
        out = out.model_copy(update={"student": out.student.model_copy(update={"base": str(base)})})
    return out


def with_training(spec: TaskSpec, training: Training):
    """A copy of the spec whose `training` block is `training`."""
    return spec.model_copy(update={"training": training})
