"""Curate raw generations into rows worth training on; every dropped row keeps its reason.

The funnel, in this order, each step recorded with rows in/out, kept rows per label, seconds:

1. validation — generation failed, schema broken, label not in the task;
2. heuristics — too short/long, non-printable, repetitive, wrong language, refusal, meta
   commentary, prompt echo, label name leaking into the text (filters.py);
3. judge score threshold (when the rows carry `judge_score`), then teacher agreement: rows whose
   blind teacher label differs from the intended one are dropped (`teacher_disagrees`), or were
   relabelled before the funnel (agreement.py; the rate per label is in `info`);
4. embed (drops nothing; its own step so encode time shows), then held-out decontamination —
   n-gram and embedding (decontam.py). Before dedup, so a leaked row never represents a group;
5. dedup — exact, MinHash, semantic, each keeping the best row of a group (dedup.py);
6. balance — per-label maximum (best rows kept); labels under the minimum are reported.

Filters run before dedup so dedup chooses representatives among rows that are already
acceptable. Embeddings are computed once for steps 4 and 5 and cached on disk (embed.py).
Rejected rows keep every column plus `reason` (machine name) and `detail` (one line a curator
can act on; for leaks the held-out row ID, never its text).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import datasets
import numpy as np

from curation import agreement, decontam, dedup, filters
from curation.embed import nearest_similarity
from heldout.formats import task_format
from distilforge.spec import TaskSpec

normalize = dedup.normalize  # kept importable from here: other stages used curate.normalize

Verdicts = dict[int, tuple[str, str]]  # row position -> (reason, detail)


@dataclass
class CurateResult:
    kept: datasets.Dataset
    rejected: datasets.Dataset
    funnel: list[dict] = field(default_factory=list)
    under_filled: dict[str, int] = field(default_factory=dict)  # label -> kept count below minimum
    info: dict = field(default_factory=dict)  # per-stage internals: LSH bands, index type, cache hits

    def reasons(self) -> dict[str, int]:
        return dict(Counter(self.rejected["reason"]).most_common()) if len(self.rejected) else {}

    def summary(self) -> dict:
        """JSON-able record for the stage manifest."""
        return {
            "kept": len(self.kept),
            "rejected": len(self.rejected),
            "reasons": self.reasons(),
            "under_filled": self.under_filled,
            "funnel": self.funnel,
            "info": self.info,
        }


class _Funnel:
    """Rows still in play, rows dropped so far, and one funnel entry per step."""

    def __init__(self, rows: list[dict], labels: list[str]):
        self.rows = rows
        self.rejected: list[dict] = []
        self.steps: list[dict] = []
        self.labels = labels

    def per_label(self) -> dict[str, int]:
        out = {lab: 0 for lab in self.labels}
        for r in self.rows:
            out[r["label"]] = out.get(r["label"], 0) + 1
        return out

    def step(self, name: str, decide: Callable[[list[dict]], Verdicts]) -> None:
        t0, before = time.perf_counter(), len(self.rows)
        verdicts = decide(self.rows) if self.rows else {}
        kept = []
        for i, r in enumerate(self.rows):
            if i in verdicts:
                reason, detail = verdicts[i]
                self.rejected.append({**r, "reason": reason, "detail": detail})
            else:
                kept.append(r)
        self.rows = kept
        self.steps.append({
            "step": name, "in": before, "out": len(kept), "dropped": before - len(kept),
            "per_label": self.per_label(), "seconds": round(time.perf_counter() - t0, 3),
        })


def _per_row(reason: str, check: Callable[[dict], str | None]) -> Callable[[list[dict]], Verdicts]:
    def decide(rows: list[dict]) -> Verdicts:
        out: Verdicts = {}
        for i, r in enumerate(rows):
            detail = check(r)
            if detail is not None:
                out[i] = (reason, detail)
        return out

    return decide


def _judge(r: dict) -> float | None:
    s = r.get("judge_score")
    return None if s is None or (isinstance(s, float) and np.isnan(s)) else float(s)


def _order(rows: list[dict], cfg) -> list[int]:
    judge = [_judge(r) for r in rows]
    return dedup.quality_order([r["text"] for r in rows], [r["label"] for r in rows],
                               judge, cfg.filters.min_tokens, cfg.filters.max_tokens)


def curate(
    raw: datasets.Dataset,
    spec: TaskSpec,
    heldout: datasets.Dataset | None = None,
    embedder=None,
    traffic_texts: list[str] | None = None,
) -> CurateResult:
    """Run the funnel over the generate stage's rows. `heldout`: the locked rows (id, text, label);
    `embedder`: a `curation.embed.Embedder` to share (default: one for `spec.curation.embeddings.model`);
    `traffic_texts`: real messages for `filters.min_traffic_similarity` (traffic.reference_texts)."""
    cfg = spec.curation
    raw, agree = agreement.prepare(raw, spec)  # relabel mode: labels fixed before any step sees them
    f = _Funnel([{**r, "_k": k} for k, r in enumerate(raw)], spec.label_names)  # _k: row key, ids may repeat
    info: dict = {}
    label_set = set(spec.label_names)

    # 1. validation
    f.step("generation_ok", _per_row("generation_failed", filters.generation_failed))
    f.step("schema_valid", _per_row("schema_invalid", filters.schema_problem))
    if label_set:
        f.step("label_in_set", _per_row("label_not_in_set", lambda r: filters.label_problem(r, label_set)))
    else:  # types without labels: the answer itself must be one the format accepts (schema-valid JSON, a reply)
        fmt = task_format(spec)
        f.step("answer_valid", _per_row("answer_invalid",
                                        lambda r: fmt.validate_answer(r["completion"][0]["content"])[1] or None))

    # 2. heuristics, one funnel step each so a curator sees which one bites
    for reason, check in filters.heuristic_checks(spec):
        f.step(reason, _per_row(reason, check))

    # 3. judge
    if cfg.filters.judge_min_score is not None and "judge_score" in raw.column_names:
        def judged(r: dict) -> str | None:
            s = _judge(r)
            if s is None:
                return "no judge score" if cfg.filters.judge_missing == "drop" else None
            return f"judge score {s:g} < {cfg.filters.judge_min_score:g}" if s < cfg.filters.judge_min_score else None

        f.step("judge_score", _per_row("low_judge_score", judged))
    for step, reason, check in agreement.checks(spec):
        f.step(step, _per_row(reason, check))
    if agree:
        info["teacher_agreement"] = agree

    # Embeddings: once, for decontamination and semantic dedup, for the rows still in play. A
    # funnel step of its own (dropping nothing) so its time is visible next to the others.
    likeness = cfg.filters.uses_traffic_reference and bool(traffic_texts)  # the filter and/or the ranking
    need_vectors = cfg.dedup.semantic or likeness or (heldout is not None and cfg.decontamination.enabled
                                                      and cfg.decontamination.cosine is not None)
    vectors: dict[int, np.ndarray] = {}
    if need_vectors and f.rows:
        if embedder is None:
            from curation.embed import Embedder

            embedder = Embedder(cfg.embeddings.model, batch_size=cfg.embeddings.batch_size, threads=cfg.embeddings.threads)
        _ = embedder.model  # load the model outside the funnel timings

        def embed(rows: list[dict]) -> Verdicts:
            before = dict(embedder.stats)
            mat = embedder.encode([r["text"] for r in rows])
            vectors.update((r["_k"], v) for r, v in zip(rows, mat))
            info["embedding"] = {"model": embedder.model_key, "rows": len(rows),
                                 **{k: round(v - before[k], 3) for k, v in embedder.stats.items()}}
            return {}

        f.step("embed", embed)

    def vecs(rows: list[dict]) -> np.ndarray:
        return np.stack([vectors[r["_k"]] for r in rows]).astype(np.float32)

    # 4. decontamination
    if heldout is not None and cfg.decontamination.enabled and len(heldout):
        def decon(rows: list[dict]) -> Verdicts:
            leaks = decontam.find_contamination(
                [r["text"] for r in rows], [str(r["_k"]) for r in rows], heldout, cfg, embedder,
                vectors=vecs(rows) if vectors else None,
            )
            pos = {str(r["_k"]): i for i, r in enumerate(rows)}
            found: dict[int, list[str]] = {}
            for d in leaks:
                what = "n-gram overlap" if d["kind"] == "ngram" else "cosine"
                found.setdefault(pos[d["row_id"]], []).append(f"held-out row {d['heldout_id']} ({what} {d['score']:.2f})")
            info["decontamination"] = dict(Counter(d["kind"] for d in leaks))
            return {i: ("heldout_contamination", "; ".join(ds)) for i, ds in found.items()}

        f.step("decontaminate", decon)

    # 4b. real-traffic likeness: after decontamination (a leak is named as one), before dedup (a
    # content-free row never represents a group). `nearest`: each row's nearest real message cosine,
    # for the filter and for balance's `most_traffic_like` order.
    nearest: dict[int, float] = {}
    if likeness and f.rows:
        f.step("traffic_likeness", _unlike_traffic(embedder.encode(traffic_texts), vecs,
                                                   cfg.filters.min_traffic_similarity, info, nearest))

    # 5. dedup, best row of each group kept; cluster sizes add up across passes
    size: dict[int, int] = {}

    def absorb(rows: list[dict], res: dedup.DedupResult, reason: str, what: str) -> Verdicts:
        """Verdicts naming the kept row; `what` is formatted with the similarity score."""
        out: Verdicts = {}
        for i, (k, score) in res.dropped.items():
            keeper = rows[k]
            size[keeper["_k"]] = size.get(keeper["_k"], 1) + size.pop(rows[i]["_k"], 1)
            other = "" if keeper["label"] == rows[i]["label"] else f"; kept row is labelled {keeper['label']}"
            out[i] = (reason, f"{what.format(score)} of kept row {keeper['id']}{other}")
        return out

    same_label = None if cfg.dedup.across_labels else (lambda rows: [r["label"] for r in rows])

    if cfg.dedup.exact:
        def exact(rows: list[dict]) -> Verdicts:
            res = dedup.exact_dedup([r["text"] for r in rows], _order(rows, cfg),
                                    labels=same_label(rows) if same_label else None)
            return absorb(rows, res, "exact_duplicate", "same normalized text")

        f.step("exact_dedup", exact)
    if cfg.dedup.minhash:
        def near(rows: list[dict]) -> Verdicts:
            res = dedup.minhash_dedup(
                [r["text"] for r in rows], _order(rows, cfg), threshold=cfg.dedup.minhash_threshold,
                ngram=cfg.dedup.minhash_ngram, num_perm=cfg.dedup.minhash_num_perm,
                labels=same_label(rows) if same_label else None,
            )
            info["minhash"] = res.info
            return absorb(rows, res, "near_duplicate", "near copy (word-shingle Jaccard {:.2f})")

        f.step("minhash_dedup", near)
    if cfg.dedup.semantic:
        def semantic(rows: list[dict]) -> Verdicts:
            res = dedup.semantic_dedup(
                vecs(rows), _order(rows, cfg), threshold=cfg.dedup.semantic_threshold,
                labels=same_label(rows) if same_label else None,
                exact_below=cfg.dedup.semantic_exact_below, nprobe=cfg.dedup.semantic_nprobe,
            )
            info["semantic"] = res.info
            return absorb(rows, res, "semantic_duplicate", "paraphrase (cosine {:.2f})")

        f.step("semantic_dedup", semantic)

    # 6. balance
    if cfg.filters.max_per_label is not None:
        by_traffic = cfg.filters.max_per_label_keeps == "most_traffic_like" and bool(nearest)

        def balance(rows: list[dict]) -> Verdicts:
            seen: Counter = Counter()
            out: Verdicts = {}
            order = _order(rows, cfg)
            if by_traffic:  # nearest real message first; the quality order breaks ties
                order = sorted(order, key=lambda i: -nearest[rows[i]["_k"]])
            for i in order:
                lab = rows[i]["label"]
                seen[lab] += 1
                if seen[lab] > cfg.filters.max_per_label:
                    n = cfg.filters.max_per_label
                    out[i] = ("label_over_max", f"label {lab} already has {n} rows nearer real traffic (this one's "
                              f"nearest cosine {nearest[rows[i]['_k']]:.2f})" if by_traffic
                              else f"label {lab} already has {n} better rows")
            return out

        f.step("balance", balance)
    counts = f.per_label()
    floor = max(cfg.filters.min_per_label, 1)
    under = {lab: counts.get(lab, 0) for lab in spec.label_names if counts.get(lab, 0) < floor}

    for r in f.rows:
        r["dedup_cluster_size"] = size.get(r.pop("_k"), 1)
    for r in f.rejected:
        r["dedup_cluster_size"] = 0
        del r["_k"]
    agreement.annotate(f.steps, agree)
    return CurateResult(*_datasets(raw, f.rows, f.rejected), f.steps, under, info)


def _unlike_traffic(ref: np.ndarray, vecs: Callable[[list[dict]], np.ndarray], th: float | None, info: dict,
                    nearest: dict[int, float]):
    """Drop generated rows whose nearest real traffic message is below cosine `th`: rows that
    read like no message a user sends (a refusal the word lists miss, a thank-you, a template's
    "Dear [Customer Name]"). Real traffic rows are the reference's own kind and always pass.
    `th` None: drop nothing, only record each row's nearest cosine in `nearest` (by row key)."""
    def decide(rows: list[dict]) -> Verdicts:
        # "traffic" is traffic.STRATEGY; importing it here would close an import cycle
        x = vecs(rows)
        near = nearest_similarity(x, ref)
        # a real message is as traffic-like as a row gets, whether or not the sample holds it
        nearest.update((r["_k"], 1.0 if r.get("strategy") == "traffic" else float(s)) for r, s in zip(rows, near))
        out = {i: ("unlike_traffic", f"nearest real traffic message cosine {s:.2f} < {th:g}")
               for i, s in enumerate(near) if th is not None and s < th and rows[i].get("strategy") != "traffic"}
        info["traffic_likeness"] = {"reference_rows": len(ref), "threshold": th, "dropped": len(out),
                                    "nearest_quantiles": {q: round(float(np.quantile(near, q / 100)), 3)
                                                          for q in (5, 25, 50)}}
        return out

    return decide


def _datasets(raw: datasets.Dataset, kept: list[dict], rejected: list[dict]) -> tuple[datasets.Dataset, datasets.Dataset]:
    feats = raw.features.copy()
    feats["dedup_cluster_size"] = datasets.Value("int64")
    rej_feats = feats.copy()
    rej_feats["reason"] = datasets.Value("string")
    rej_feats["detail"] = datasets.Value("string")
    return _from_rows(kept, feats), _from_rows(rejected, rej_feats)


def _from_rows(rows: list[dict], feats: datasets.Features) -> datasets.Dataset:
    if not rows:  # from_list([]) loses the schema
        return datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
    return datasets.Dataset.from_list(rows, features=feats)


def render_funnel(funnel: list[dict], under_filled: dict[str, int] | None = None, title: str = "Curation funnel"):
    """A rich Table of the funnel: rows in/out per step, the thinnest label after it, seconds."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for col, just in (("step", "left"), ("in", "right"), ("out", "right"), ("dropped", "right"),
                      ("kept %", "right"), ("fewest per label", "left"), ("seconds", "right")):
        table.add_column(col, justify=just)
    task_labels = set(funnel[-1].get("per_label") or {}) if funnel else set()  # off-task labels are gone by then
    for s in funnel:
        pl = {k: v for k, v in (s.get("per_label") or {}).items() if k in task_labels}
        thin = min(pl.items(), key=lambda kv: (kv[1], kv[0])) if pl else None
        pct = f"{100 * s['out'] / s['in']:.1f}" if s["in"] else "-"
        table.add_row(
            s["step"], str(s["in"]), str(s["out"]),
            f"[red]{s['dropped']}[/red]" if s["dropped"] else "0", pct,
            f"{thin[1]} ({thin[0]})" if thin else "-", f"{s['seconds']:.2f}",
        )
    notes = []
    teacher = next((s["teacher"] for s in funnel if s.get("teacher")), None)
    if teacher and teacher["checked"]:
        what = {"drop": "dropped", "relabel": "relabelled", "keep": "kept"}[teacher["mode"]]
        notes.append(f"teacher disagreed with {teacher['disagree']} of {teacher['checked']} labels "
                     f"({100 * teacher['rate']:.1f} %, {what}; per label in the manifest)")
    if under_filled:
        names = ", ".join(f"{k}={v}" for k, v in sorted(under_filled.items(), key=lambda kv: kv[1]))
        notes.append(f"[yellow]under-filled labels: {names}[/yellow]")
    if notes:
        table.caption = "\n".join(notes)
    return table


def render_reasons(rejected: datasets.Dataset, title: str = "Rejected rows by reason"):
    """A rich Table: reason -> count, with one example detail each (never held-out text)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("reason")
    table.add_column("rows", justify="right")
    table.add_column("example detail", overflow="fold")
    if len(rejected):
        first: dict[str, str] = {}
        for reason, detail in zip(rejected["reason"], rejected["detail"]):
            first.setdefault(reason, detail)
        for reason, n in Counter(rejected["reason"]).most_common():
            table.add_row(reason, str(n), first[reason][:120])
    return table
