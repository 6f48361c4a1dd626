"""YAML file -> validated pydantic model, or one error line naming the file, line and field.

Every YAML a user hands distilforge (the task spec, a `train --config`, `decide.yaml`) goes through
here, so a typo reads the same everywhere: `task.yaml: line 4 invalid YAML: ...` or
`task.yaml: field 'teacher.temperature': Input should be a valid number`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from distilforge.errors import UserError

M = TypeVar("M", bound=BaseModel)


def field_path(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def read_yaml(path: str | Path, what: str, error: type[UserError] = UserError, *, mapping: bool = True) -> Any:
    """The parsed file (an empty file is `{}`); `what` names it in errors ('task spec')."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{p}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if mapping and not isinstance(raw, dict):
        raise error(f"{p}: a {what} must be a YAML mapping, got {type(raw).__name__}")
    return raw


def validated(model: type[M], raw: Any, source: str, error: type[UserError] = UserError) -> M:
    """`model.model_validate(raw)`, its first error as one line (`source: field 'a.b': msg (+N more)`)."""
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise error(f"{source}: field '{field_path(err['loc'])}': {msg}{more}") from None
