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

import yaml
from pydantic import ValidationError

from distilforge.spec import SpecError, Training, _field_path, _merge


def load_training_config(path: str | Path, base: Training | None = None) -> Training:
    """The `training` block from `path`, merged over `base` (the spec's block; defaults if None)."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise SpecError(f"{p}: cannot read training config ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{p}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: a training config must be a YAML mapping, got {type(raw).__name__}")
    if set(raw) == {"training"} and isinstance(raw["training"], dict):
        raw = raw["training"]
    merged = _merge((base or Training()).model_dump(mode="json"), raw)
    try:
        return Training.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        raise SpecError(f"{p}: field '{_field_path(err['loc'])}': {msg}") from None


def with_training(spec, training: Training):
    """A copy of the spec whose `training` block is `training`."""
    return spec.model_copy(update={"training": training})
