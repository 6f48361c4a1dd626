"""One TaskFormat per task type (heldout/formats/base.py says what a format owns)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from heldout.formats.base import TaskFormat, Unsupported
from heldout.formats.classification import ClassificationFormat
from heldout.formats.extraction import ExtractionFormat
from heldout.formats.instruction import InstructionFormat

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

FORMATS: dict[str, type[TaskFormat]] = {f.type: f for f in (ClassificationFormat, ExtractionFormat, InstructionFormat)}


def task_format(spec: TaskSpec) -> TaskFormat:
    """The format object for this spec's task type."""
    return FORMATS[spec.type](spec)


__all__ = ["FORMATS", "TaskFormat", "Unsupported", "task_format"]
