"""Several inputs per teacher request (`generation.inputs_per_request` = k > 1, classification).

Why: on a small CPU box most of a generated row's teacher time is reading the prompt and writing
the JSON wrapper around one short message. One request that asks for k distinct messages pays
that once per k rows. The plan is the one-row-per-request plan (every row keeps its id,
label, strategy and sampled attributes: curation/generation/plan.py `batch`); only the asking
changes: one request lists k style lines and gets back {"messages": [k strings]}.

Honesty rules kept here:
  - a message the teacher did not write is never invented: a short list leaves the missing
    slots to a re-ask for just those (`generation.invalid_retries`), then to failed rows with
    the reason;
  - a shard is committed only when every request of it came back (a transport failure on a
    first ask or a re-ask leaves it to the next run, as for single requests), so kill -9 +
    rerun gives the same rows (per-request seeds: gensteps.TimedOpenAILLM);
  - the tokens and latency of a request (all its attempts) are split evenly over its rows, so
    per-row stats, costs and budgets add up to what was spent.
The generate manifest records how many messages of each batch are near-duplicates of another
in the same batch (`batch_stats`), so a curator sees when k is too high for the teacher.
"""

import json

from distilabel.steps import StepInput
from distilabel.steps.tasks import TextGeneration

from curation import dedup, formats
from curation.generation.gensteps import CommitShards, SentinelAware, stats_of, to_row
from curation.generation.plan import slots_text
from distilforge.spec import TaskSpec, validate_spec

NEAR_DUPLICATE = 0.7  # word-bigram Jaccard at or above which two messages of a batch count as one


class BatchedGeneration(SentinelAware, TextGeneration):
    """Asks each batch request once, parses its list per slot, then re-asks only for the slots that
    are missing or unusable (up to `invalid_retries` times). Output column `batch_results`: one
    {fields, error, attempts} per slot, as JSON. Tokens and latency of every attempt are summed."""

    spec_json: str

    def process(self, inputs: StepInput):  # type: ignore[override]
        spec = validate_spec(json.loads(self.spec_json))
        by_id = {r["request_id"]: r for r in inputs if not r.get("sentinel")}
        outs = next(super().process(inputs))
        state: dict[str, list] = {}
        for o in outs:
            o["attempts"] = 1
            if o.get("sentinel") or o.get("generation") is None:
                continue
            st = stats_of(o, self.name)
            got = formats.parse_batch(spec, o["generation"], by_id[o["request_id"]]["n_messages"],
                                      st.get("finish_reason"), int(st.get("output_tokens") or 0))
            state[o["request_id"]] = [[f, e, 1] for f, e in got]
        for attempt in range(2, spec.generation.invalid_retries + 2):
            todo = [(o, [j for j, s in enumerate(state[o["request_id"]]) if s[0] is None]) for o in outs
                    if o["request_id"] in state and o.get("generation") is not None]
            todo = [(o, miss) for o, miss in todo if miss]
            if not todo:
                break
            asks = []
            for o, miss in todo:
                inp = by_id[o["request_id"]]
                lines = json.loads(inp["slots_json"])
                asks.append({**inp, "n_messages": len(miss), "slots": slots_text([lines[j] for j in miss])})
            again = next(super().process(asks))
            for (o, miss), a in zip(todo, again):
                old, new = stats_of(o, self.name), dict(stats_of(a, self.name))
                for k in ("input_tokens", "output_tokens", "latency_s"):
                    new[k] = (new.get(k) or 0) + (old.get(k) or 0)
                o.setdefault("distilabel_metadata", {})[f"statistics_{self.name}"] = new
                o["attempts"] += 1
                if a.get("generation") is None:  # transport failure: the shard is asked again next run
                    o["generation"] = None
                    continue
                st = stats_of(a, self.name)
                got = formats.parse_batch(spec, a["generation"], len(miss), st.get("finish_reason"),
                                          int(st.get("output_tokens") or 0))
                for j, (f, e) in zip(miss, got):
                    state[o["request_id"]][j] = [f, e, attempt]
        for o in outs:
            s = state.get(o["request_id"]) if not o.get("sentinel") else None
            o["batch_results"] = json.dumps([{"fields": f, "error": e, "attempts": n} for f, e, n in s]) if s else None
        yield outs


def split(total: int, n: int) -> list[int]:
    """`total` split over n rows as evenly as integers allow (the first rows take the remainder)."""
    q, r = divmod(int(total), n)
    return [q + (i < r) for i in range(n)]


class BatchCommitShards(CommitShards):
    """Commits the rows of batch requests: one row per asked message, each under its planned id."""

    def row_ids(self, x: dict) -> list[str]:
        return [r["request_id"] for r in json.loads(x["rows_json"])]

    def build_rows(self, spec: TaskSpec, x: dict, stats: list[dict], price) -> list[dict]:
        reqs, res = json.loads(x["rows_json"]), json.loads(x["batch_results"])
        st, n = stats[0], len(reqs)
        p_tok, c_tok = split(int(st.get("input_tokens") or 0), n), split(int(st.get("output_tokens") or 0), n)
        lat = float(st.get("latency_s") or 0) / n
        return [to_row(spec, req, None, {**st, "input_tokens": p_tok[i], "output_tokens": c_tok[i], "latency_s": lat},
                       self.model_name, self.base_url, price, int(r["attempts"]), parsed=(r["fields"], r["error"]))
                for i, (req, r) in enumerate(zip(reqs, res))]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicates(texts: list[str], threshold: float = NEAR_DUPLICATE) -> int:
    """How many of `texts` have another one of them at word-bigram Jaccard >= threshold."""
    sh = [dedup.shingles(t, 2) for t in texts]
    return sum(any(jaccard(sh[i], sh[j]) >= threshold for j in range(len(sh)) if j != i) for i in range(len(sh)))


def batch_stats(spec: TaskSpec, plan_rows: list[dict], rows: dict[str, dict]) -> dict:
    """Per committed batch: how many of its ok messages are near-duplicates of another of the same
    batch; totals and the share over all ok rows of committed batches."""
    by: dict[str, list[str]] = {}
    for r in plan_rows:
        row = rows.get(r["request_id"])
        if row is not None and r.get("batch_id"):
            by.setdefault(r["batch_id"], [])
            if row["status"] == "ok":
                by[r["batch_id"]].append(row["text"])
    per = {bid: near_duplicates(texts) for bid, texts in sorted(by.items())}
    ok = sum(len(t) for t in by.values())
    dup = sum(per.values())
    return {"inputs_per_request": spec.generation.inputs_per_request, "requests": len(by), "ok_rows": ok,
            "near_duplicate_rows": dup, "near_duplicate_share": round(dup / ok, 4) if ok else 0.0,
            "near_duplicate_threshold": NEAR_DUPLICATE, "near_duplicates_by_batch": per}
