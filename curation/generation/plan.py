"""Every request a generation run will make, planned up front and deterministic in (spec, seed).

Ids are content-derived: a request id hashes the exact messages sent, the teacher settings that
shape the answer, the seed and its index, so a rerun plans the same ids and an edited template,
model or temperature plans new ones (old shards are then simply not collected). Requests are
grouped into shards by id; a shard is the unit of commit, resume and budget accounting.

Strategies (the `strategy` column): `attributes` (sampled tone/length/channel/typos/persona),
`fewshot` (seed examples from the spec shown to the teacher, self-instruct style), `targeted`
(extra requests from a targets file: label + keywords + attributes) and `evolve` (an earlier row
rewritten harder / more specific / noisier, Evol-Instruct style). `evolve` depends on its parent's
text, so its requests form a second phase that runs after the parents' shards are committed.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any


from curation import formats
from heldout.formats import task_format
from distilforge.yamlfile import read_yaml
from distilforge.errors import UserError

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec

ATTR_KEYS = ("tone", "length", "channel", "typos", "persona")


class TargetsError(UserError, ValueError):
    pass


def h(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def teacher_key(spec: TaskSpec) -> dict:
    """Teacher settings that change an answer: part of every request id."""
    t = spec.teacher
    return {"model": t.model, "temperature": t.temperature, "max_tokens": t.max_tokens,
            "schema": formats.response_schema(spec), "retries": spec.generation.invalid_retries,
            "response_format": formats.structured_mode(t, t.endpoint, spec.generation)}


def quotas(n: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n by weights, largest remainder, deterministic (ties by name)."""
    w = {k: v for k, v in sorted(weights.items()) if v > 0}
    total = sum(w.values())
    if n <= 0 or total <= 0:
        return {}
    raw = {k: n * v / total for k, v in w.items()}
    out = {k: int(x) for k, x in raw.items()}
    for k in sorted(raw, key=lambda k: (-(raw[k] - out[k]), k))[: n - sum(out.values())]:
        out[k] += 1
    return out


def load_targets(path: str | Path, spec: TaskSpec) -> list[dict]:
    """A targets YAML (list, or {targets: [...]}) → normalized targets; one clear error when bad."""
    p = Path(path)
    raw = read_yaml(p, "targets file", TargetsError, mapping=False)  # one line, with the YAML line number
    items = raw.get("targets") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise TargetsError(f"{p}: expected a non-empty list of targets")
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, dict):
            raise TargetsError(f"{p}: targets[{i}]: expected a mapping")
        label, contrast = t.get("label") or "", t.get("contrast") or ""
        bad = task_format(spec).target_problem(label, contrast)
        if bad:
            raise TargetsError(f"{p}: targets[{i}].{bad}")
        kw = t.get("keywords") or []
        kw = [kw] if isinstance(kw, str) else [str(k) for k in kw]
        attrs = t.get("attributes") or {}
        bad = sorted(set(attrs) - set(ATTR_KEYS))
        if bad:
            raise TargetsError(f"{p}: targets[{i}].attributes: unknown {', '.join(bad)} (one of {', '.join(ATTR_KEYS)})")
        count = t.get("count", 5)
        if not isinstance(count, int) or count < 1:
            raise TargetsError(f"{p}: targets[{i}].count: must be a positive integer")
        item = {"label": label, "keywords": kw, "attributes": {k: str(v) for k, v in attrs.items()}, "count": count}
        if contrast:  # only when set: targets files without it keep their request ids
            item["contrast"] = contrast
        out.append(item)
    return out


def _examples_text(spec: TaskSpec, rng: random.Random, label: str) -> str:
    fmt = task_format(spec)
    pool = fmt.example_pool(label)
    return "\n".join(fmt.example_line(e) for e in rng.sample(pool, min(3, len(pool))))


def _base_cols(spec: TaskSpec) -> dict:
    g = spec.generation
    return {"instruction": spec.instruction, "input_description": g.input_description,
            "schema_text": "", "style_guide": "", **task_format(spec).prompt_columns(), "examples_text": "", "keywords": "", "parent_text": "",
            "evolution": "", "description": ""}


def _request(spec: TaskSpec, tname: str, key: dict, cols: dict, label: str, strategy: str, idx: Any,
             attrs: dict, extra: dict | None = None) -> dict:
    cols = {**cols, **{k: attrs.get(k, "") for k in ATTR_KEYS}, "strategy": strategy}
    msgs = formats.messages(tname, cols)
    rid = "g-" + h(msgs, key, spec.generation.seed, label, strategy, idx)[:16]
    return {"request_id": rid, "label": label, "attributes": json.dumps(attrs, sort_keys=True),
            "parent_id": "", **cols, **(extra or {})}


def _label_jobs(spec: TaskSpec) -> list[tuple[str, str, int]]:
    """(label, description, count) groups: one per label for classification, one for the others."""
    return task_format(spec).generation_jobs()


def plan_base(spec: TaskSpec, targets: list[dict] | None = None) -> list[dict]:
    """Phase 1: attributes / fewshot / targeted requests (no dependency on earlier output)."""
    g = spec.generation
    tname = formats.template_name(spec)
    key, base = teacher_key(spec), _base_cols(spec)
    fmt = task_format(spec)
    desc = fmt.label_descriptions()
    reqs = []
    for label, description, n in _label_jobs(spec):
        rng = random.Random(h(g.seed, spec.name, label))
        q_evolve = quotas(n, g.strategies).get("evolve", 0)
        q = quotas(n - q_evolve, {k: v for k, v in g.strategies.items() if k != "evolve"})
        i = 0
        for strategy in ("attributes", "fewshot"):
            for _ in range(q.get(strategy, 0)):
                attrs = {k: rng.choice(v) for k, v in sorted(g.attributes.items()) if v}
                lab, d = fmt.row_label(label, description, rng)
                cols = {**base, "description": d}
                if strategy == "fewshot":
                    cols["examples_text"] = _examples_text(spec, rng, label)
                reqs.append(_request(spec, tname, key, cols, lab, strategy, i, attrs))
                i += 1
    for ti, t in enumerate(targets or []):
        rng = random.Random(h(g.seed, spec.name, "target", t))
        for j in range(t["count"]):
            attrs = {**{k: rng.choice(v) for k, v in sorted(g.attributes.items()) if v}, **t["attributes"]}
            cols = {**base, "description": _situation(desc, t), "keywords": ", ".join(t["keywords"])}
            reqs.append(_request(spec, tname, key, cols, t["label"], "targeted", [h(t)[:12], j], attrs))
    return shard(reqs, g.shard_size, "s-")


def _situation(desc: dict[str, str], target: dict) -> str:
    """The situation a targeted request describes. A contrastive target (blind spots: the student
    confuses `label` with `contrast` on the dev split) asks for a message that is clearly the one
    and names what it must not read like, so the rows teach the boundary, not just the label."""
    own = desc.get(target["label"], "")
    other = target.get("contrast")
    if not other:
        return own
    return f"{own} (make it clearly this, not a case where {desc.get(other, other)})"


def plan_evolve(spec: TaskSpec, base: list[dict]) -> list[dict]:
    """Phase 2: evolve requests, each naming a phase-1 parent (its text is filled in at run time)."""
    g = spec.generation
    if g.strategies.get("evolve", 0) <= 0:
        return []
    tname = formats.template_name(spec)
    key = teacher_key(spec)
    by_label: dict[str, list[dict]] = {}
    for r in sorted(base, key=lambda r: r["request_id"]):
        if r["strategy"] != "targeted":
            by_label.setdefault(r["label"].split(", ")[0], []).append(r)
    reqs = []
    for label, _desc, n in _label_jobs(spec):
        parents = by_label.get(label, [])
        k = quotas(n, g.strategies).get("evolve", 0)
        rng = random.Random(h(g.seed, spec.name, label, "evolve"))
        for i in range(k if parents else 0):
            p = parents[i % len(parents)]
            evo = rng.choice(g.evolutions)
            rid = "g-" + h("evolve", p["request_id"], evo, i, key, formats.template_hash(tname))[:16]
            attrs = json.loads(p["attributes"])
            reqs.append({**p, "request_id": rid, "strategy": "evolve", "evolution": evo, "parent_id": p["request_id"],
                         "parent_text": "", "attributes": json.dumps({**attrs, "evolution": evo}, sort_keys=True)})
    return shard(reqs, g.shard_size, "e-")


def shard(reqs: list[dict], size: int, prefix: str) -> list[dict]:
    """Interleave by id hash (an early stop still leaves a balanced set), then cut into shards."""
    reqs = sorted(reqs, key=lambda r: h(r["request_id"]))
    for i in range(0, len(reqs), size):
        group = reqs[i:i + size]
        sid = prefix + h([r["request_id"] for r in group])[:12]
        for r in group:
            r["shard_id"], r["shard_n"] = sid, len(group)
    return reqs


# --- several inputs per request (generation.inputs_per_request) ---------------------------------

def slot_line(attrs: dict) -> str:
    """One message's style in a batch request: the sampled attributes, as the single template says them."""
    a = {k: v for k, v in attrs.items() if v}
    parts = [f"{a['tone']} tone" if "tone" in a else "", a.get("length", ""),
             f"written {a.get('channel', '')}{a.get('typos', '')}".strip() if "channel" in a or "typos" in a else "",
             f"by {a['persona']}" if "persona" in a else ""]
    parts += [f"{k}: {v}" for k, v in sorted(a.items()) if k not in ATTR_KEYS]
    return ", ".join(p for p in parts if p) or "any style"


def slots_text(lines: list[str]) -> str:
    return "\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines))


def batch(spec: TaskSpec, base: list[dict]) -> list[dict]:
    """Group phase-1 requests into requests of `inputs_per_request` rows (same label, strategy,
    situation and keywords; each row keeps its own id, attributes and style line) and re-shard by
    whole batches, so a shard is still committed only when every row of it came back.

    Every row gets `batch_id` (hash of the batch's messages and row ids: an edited batch template
    or another grouping asks again), `batch_i` (its place in the list) and `batch_n`. A shard holds
    about `shard_size` rows (at least one batch); its id hashes its batch ids, so it never collides
    with a one-row-per-request shard of the same run dir."""
    g = spec.generation
    k = g.inputs_per_request
    tname = formats.batch_template_name(spec)
    if tname is None:
        return base
    key = teacher_key(spec)
    groups: dict[str, list[dict]] = {}
    for r in sorted(base, key=lambda r: h(r["request_id"])):
        gk = h(r["label"], r["strategy"], r["description"], r["keywords"])
        groups.setdefault(gk, []).append(dict(r))
    batches = []
    for gk in sorted(groups):
        rows = groups[gk]
        for i in range(0, len(rows), k):
            part = rows[i:i + k]
            lines = [slot_line(json.loads(r["attributes"])) for r in part]
            msgs = formats.messages(tname, {**part[0], "n_messages": len(part), "slots": slots_text(lines)})
            bid = "b-" + h(msgs, key, g.seed, [r["request_id"] for r in part])[:16]
            for j, r in enumerate(part):
                r.update(batch_id=bid, batch_i=j, batch_n=len(part), slot=lines[j])
            batches.append((bid, part))
    batches.sort(key=lambda b: h(b[0]))
    per = max(1, g.shard_size // k)
    out = []
    for i in range(0, len(batches), per):
        group = batches[i:i + per]
        sid = "s-" + h(["batch", [b for b, _ in group]])[:12]
        n = sum(len(rows) for _, rows in group)
        for _, rows in group:
            for r in rows:
                r["shard_id"], r["shard_n"] = sid, n
                out.append(r)
    return out


def batch_requests(spec: TaskSpec, rows: list[dict]) -> list[dict]:
    """The teacher requests for batched rows (one per `batch_id`, in row order): the first row's
    columns plus the list of slots; `rows_json` carries each row's id, label, strategy and
    attributes for the commit step. `shard_n` counts requests here (the commit step's unit)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["batch_id"], []).append(r)
    per_shard: dict[str, int] = {}
    for part in by.values():
        per_shard[part[0]["shard_id"]] = per_shard.get(part[0]["shard_id"], 0) + 1
    out = []
    for bid, part in by.items():
        part = sorted(part, key=lambda r: r["batch_i"])
        lines = [r["slot"] for r in part]
        cols = {c: part[0].get(c, "") for c in formats.COLUMNS}
        out.append({**cols, "request_id": bid, "label": part[0]["label"], "n_messages": len(part),
                    "slots": slots_text(lines), "slots_json": json.dumps(lines),
                    "rows_json": json.dumps([{k: r.get(k, "") for k in ("request_id", "label", "strategy", "attributes",
                                                                        "parent_id")} for r in part]),
                    "shard_id": part[0]["shard_id"], "shard_n": per_shard[part[0]["shard_id"]]})
    return out
