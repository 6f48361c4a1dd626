"""Generation requests and answers: rendering the prompt templates, the `response_format` per
backend, and lenient parsing of what the teacher wrote.

What differs by task type (the answer schema, which fields a row has, the completion text) is the
task format's (heldout/formats); this module is the part every type shares. One module so the
generation step, the dry-run forecast and the benchmark render the very same prompts, and so a
garbage answer (not JSON, empty, truncated, schema-invalid, unknown label) always becomes an
error string here, never an exception in a pipeline step.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets

from jinja2 import Template

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec, Teacher

from heldout.formats import task_format

PROMPTS = Path(__file__).parent / "prompts"
# Every generation request carries all of these (empty when a strategy does not use one), so one
# TextGeneration step with one template serves every strategy.
COLUMNS = ["strategy", "instruction", "input_description", "description", "tone", "length", "channel", "typos",
           "persona", "examples_text", "keywords", "schema_text", "style_guide", "parent_text", "evolution",
           "n_messages", "slots"]


def features(**columns: str) -> datasets.Features:
    """HF features from short type names: "string", "int64", "float64", or "chat" (a list of
    {role, content} messages, TRL's conversational format)."""
    chat = [{"role": datasets.Value("string"), "content": datasets.Value("string")}]
    return datasets.Features({k: chat if t == "chat" else datasets.Value(t) for k, t in columns.items()})


def template_name(spec: TaskSpec) -> str:
    t = spec.generation.prompt_template
    return task_format(spec).template if t == "auto" else t


@lru_cache(maxsize=32)
def template_text(name: str) -> str:
    p = PROMPTS / f"{name}.jinja2"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such prompt template (generation.prompt_template)")
    return p.read_text()


@lru_cache(maxsize=32)
def system_text(name: str) -> str:
    p = PROMPTS / f"{name}.system.txt"
    return p.read_text().strip() if p.exists() else ""


def template_hash(name: str) -> str:
    return hashlib.sha256((template_text(name) + "\0" + system_text(name)).encode()).hexdigest()[:12]


def render(name: str, columns: dict) -> str:
    """What distilabel's TextGeneration sends as the user message for `columns` (same Jinja2 call)."""
    return Template(template_text(name)).render(**{k: columns.get(k, "") for k in COLUMNS})


def messages(name: str, columns: dict) -> list[dict]:
    sys = system_text(name)
    return ([{"role": "system", "content": sys}] if sys else []) + [{"role": "user", "content": render(name, columns)}]


def response_schema(spec: TaskSpec) -> dict:
    """JSON Schema of the teacher's generation answer for this task type."""
    return task_format(spec).answer_schema()


def structured_mode(teacher: Teacher, endpoint_kind: str, generation=None) -> str:
    """The response_format mode for a call: the teacher's `structured_output` (`auto` picks by
    endpoint kind), or `none` for generation requests when `generation.constrained` is off."""
    if generation is not None and not generation.constrained:
        return "none"
    mode = teacher.structured_output
    if mode == "auto":
        mode = "llama_cpp" if endpoint_kind == "embedded" else "openai"
    return "none" if mode == "fallback" else mode  # fallback: lenient parsing, invalid answers re-asked


def generation_extra_body(spec: TaskSpec, endpoint_kind: str) -> dict:
    """The request kwargs of a generation call (the same for the pipeline and the calibration)."""
    return extra_body(structured_mode(spec.teacher, endpoint_kind, spec.generation), response_schema(spec))


def extra_body(mode: str, schema: dict | None, name: str = "answer") -> dict:
    """`response_format` per backend: llama-cpp-python only takes json_object + schema (json_schema
    → HTTP 500); OpenAI-compatible servers take json_schema. Answers are validated after either way."""
    if schema is None or mode == "none":
        return {}
    if mode == "llama_cpp":
        return {"extra_body": {"response_format": {"type": "json_object", "schema": schema}}}
    return {"extra_body": {"response_format": {"type": "json_schema",
                                               "json_schema": {"name": name, "schema": schema}}}}


def _loads(raw: str | None, finish_reason: str | None, completion_tokens: int) -> tuple[Any, str]:
    if raw is None:
        return None, "no output from teacher"
    if not raw.strip():
        return None, "empty output"
    try:
        return json.loads(raw), ""
    except json.JSONDecodeError:
        pass
    # Without a grammar, small teachers wrap the JSON in a ```json fence or add a line around it:
    # take the outermost {...} when that alone parses.
    lo, hi = raw.find("{"), raw.rfind("}")
    if 0 <= lo < hi:
        try:
            return json.loads(raw[lo:hi + 1]), ""
        except json.JSONDecodeError:
            pass
    if finish_reason == "length":
        return None, f"truncated at max_tokens ({completion_tokens} tokens): {raw[-60:]!r}"
    return None, f"not JSON: {raw[:80]!r}"


def _text(obj: dict, key: str) -> str | None:
    v = obj.get(key)
    return " ".join(v.split()) if isinstance(v, str) and v.strip() else None


def parse(spec: TaskSpec, raw: str | None, finish_reason: str | None = None, completion_tokens: int = 0) -> tuple[dict | None, str]:
    """Teacher generation → ({text, answer}, "") or (None, reason). Never raises."""
    obj, err = _loads(raw, finish_reason, completion_tokens)
    if err:
        return None, err
    if not isinstance(obj, dict):
        return None, f"JSON is a {type(obj).__name__}, not an object"
    fields, err = task_format(spec).parse_generated(obj)
    if fields and fields["text"].lower() in {" ".join(e.input.split()).lower() for e in spec.examples}:
        return None, "copied a seed example verbatim"  # small teachers echo few-shot examples
    return fields, err


def batch_template_name(spec: TaskSpec) -> str | None:
    """The template of a request for several inputs at once, or None where each row is one request
    (inputs_per_request 1, or a task type without a batch template)."""
    if spec.generation.inputs_per_request <= 1:
        return None
    return task_format(spec).batch_template


def batch_response_schema() -> dict:
    """JSON Schema of a batch answer: {"messages": [str, ...]} (the length is asked for, and checked
    by `parse_batch`: a grammar that forces it makes small teachers pad with copies)."""
    return {"type": "object", "properties": {"messages": {"type": "array", "items": {"type": "string"}}},
            "required": ["messages"]}


def batch_extra_body(spec: TaskSpec, endpoint_kind: str) -> dict:
    return extra_body(structured_mode(spec.teacher, endpoint_kind, spec.generation), batch_response_schema())


def _scan_strings(raw: str) -> list | None:
    """The complete items of the first JSON list in `raw`, even when the list is cut off (an answer
    truncated at max_tokens keeps its finished messages) or followed by chatter. None: no list."""
    key = raw.find('"messages"')
    lo = raw.find("[", key if key >= 0 else 0)
    if lo < 0:
        return None
    dec, i, items = json.JSONDecoder(), lo + 1, []
    while True:
        while i < len(raw) and raw[i] in " \t\r\n,":
            i += 1
        if i >= len(raw) or raw[i] == "]":
            return items
        try:
            item, i = dec.raw_decode(raw, i)
        except json.JSONDecodeError:
            return items
        items.append(item)


def _batch_items(raw: str | None, finish_reason: str | None, completion_tokens: int) -> tuple[list | None, str]:
    obj, err = _loads(raw, finish_reason, completion_tokens)
    if err and raw and raw.strip():
        lo, hi = raw.find("["), raw.rfind("]")
        if 0 <= lo < hi and raw.find("{") < 0:  # a bare (possibly fenced) list
            try:
                obj, err = json.loads(raw[lo:hi + 1]), ""
            except json.JSONDecodeError:
                pass
        if err:
            items = _scan_strings(raw)
            if items:
                return items, ""
    if err:
        return None, err
    if isinstance(obj, list):
        return obj, ""
    if isinstance(obj, dict):
        got = obj.get("messages")
        if isinstance(got, list):
            return got, ""
        if got is None and _text(obj, "message"):  # one {"message": ...} answer: a list of one
            return [obj["message"]], ""
        if got is not None:
            return None, f"'messages' is a {type(got).__name__}, not a list"
        return None, "JSON without a 'messages' list"
    return None, f"JSON is a {type(obj).__name__}, not a list of messages"


def parse_batch(spec: TaskSpec, raw: str | None, n: int, finish_reason: str | None = None,
                completion_tokens: int = 0) -> list[tuple[dict | None, str]]:
    """A batch answer → one (fields, "") or (None, reason) per asked message, in order. Lenient
    like `parse` (fences, text around the JSON, a list cut off by max_tokens keeps its complete
    items); messages beyond `n` are ignored; a missing or unusable one has its reason (it is
    re-asked or becomes a failed row; no row is ever made up). Never raises."""
    items, err = _batch_items(raw, finish_reason, completion_tokens)
    if items is None:
        return [(None, err)] * n
    seeds = {" ".join(e.input.split()).lower() for e in spec.examples}
    out: list[tuple[dict | None, str]] = []
    for i in range(n):
        if i >= len(items):
            cut = f", cut off at max_tokens ({completion_tokens} tokens)" if finish_reason == "length" else ""
            out.append((None, f"the teacher's list had {len(items)} of {n} messages{cut}"))
            continue
        item = items[i]
        if isinstance(item, dict):
            item = item.get("message", item.get("text"))
        text = " ".join(item.split()) if isinstance(item, str) else ""
        if not text:
            out.append((None, f"message {i + 1} of the list is empty or not a string"))
        elif text.lower() in seeds:
            out.append((None, "copied a seed example verbatim"))
        else:
            out.append(({"text": text, "answer": ""}, ""))
    return out


def completion_text(spec: TaskSpec, label: str, answer: str) -> str:
    """The SFT completion of a row (the task format's: the label, or the answer)."""
    return task_format(spec).completion(label, answer)
