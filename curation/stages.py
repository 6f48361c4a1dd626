"""Curation-side stages: `generate` (teacher → raw rows) and `curate` (raw → curated + rejected)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from distilforge.errors import DataError
from distilforge.layout import Run
from distilforge.manifest import Stage, load_dataset_dir, output_hash, read_manifest, sha256_json
from distilforge.records import GenerationResult
from distilforge.spec import TaskSpec, semantic_dump

if TYPE_CHECKING:
    from distilforge.teacher import Endpoint

console = Console(stderr=True)


def generation_config(spec: TaskSpec, run: Path | None = None) -> dict:
    """What changes the generated rows (training/eval settings, caps and concurrency do not)."""
    from curation.generation.generate import saved_targets

    t = spec.teacher
    gen = semantic_dump(spec.generation)
    if gen.get("inputs_per_request") == 1:  # the default: runs from before the field keep their fingerprint
        del gen["inputs_per_request"]
    return {**spec.task_definition(), "generation": gen, "targets": saved_targets(Run(run).generate) if run else [],
            "teacher": {"model": t.model, "endpoint": t.endpoint, "base_url": t.base_url,
                        "temperature": t.temperature, "max_tokens": t.max_tokens,
                        "structured_output": t.structured_output}}


def forecast_stage(spec: TaskSpec, run: Path, endpoint: Endpoint, calibrate: int = 3) -> dict:
    """`generate --dry-run`: requests, tokens and cost still to spend; writes generate/forecast.json."""
    from rich.table import Table

    from curation.generation import budget
    from curation.generation.generate import committed_shards, plan_all
    from distilforge.atomic import atomic_write_json

    out = Run(run).generate
    base, evolve = plan_all(spec, out)
    fc = budget.forecast(spec, endpoint, base, evolve, committed_shards(out), calibrate)
    fc["spent_so_far"] = budget.spent(out)
    atomic_write_json(out / "forecast.json", fc)
    tab = Table(title=f"generate forecast ({fc['method']})")
    for c in ("phase", "requests", "prompt tokens", "completion tokens", "cost USD"):
        tab.add_column(c, justify="right" if c != "phase" else "left")
    for name, ph in [*fc["phases"].items(), ("total", fc["total"])]:
        tab.add_row(name, str(ph["requests"]), str(ph["prompt_tokens"]), str(ph["completion_tokens"]),
                    f"{ph['cost_usd']:.4f}")
    Console().print(tab)
    return fc


def generate_stage(spec: TaskSpec, run: Path, endpoint: Endpoint, max_cost: float | None = None,
                   max_tokens: int | None = None) -> dict:
    """Teacher → RUN/generate/rows. Failed rows are results (status/error); a run where no row is
    usable still writes its rows and manifest, then raises GenerationFailed (one line, rc 1)."""
    from distilforge.stage import scoped

    spec = scoped(spec, "generate")  # only the spec blocks PIPELINE declares for this stage
    from curation.generation import budget
    from curation.generation.generate import collect, generate, generation_caps
    from curation.generation.runner import GenerationFailed

    st = Stage(Run(run).generate, "generate", {}, generation_config(spec, run))
    prev = GenerationResult.read(run, DataError)
    if st.is_current() and prev and prev.pending_shards == 0:
        if prev.requests and not prev.ok and not prev.stopped_by:
            raise GenerationFailed(f"all {prev.requests} rows failed: {prev.first_failure or 'see generate/rows'} "
                                   "(unchanged since the last run; change the spec or teacher to retry)")
        console.print("generate: inputs unchanged and all shards committed, skipped")
        return read_manifest(st.dir)
    st.begin()
    from curation.generation.generate import failure_line

    stats = generate(spec, endpoint, st.dir, max_cost=max_cost, max_tokens=max_tokens)
    ds = collect(spec, st.dir)
    failed_all = failure_line(ds, endpoint, stats["stopped_by"])
    extra: dict = {}
    from curation import agreement  # blind teacher labels for curate's teacher_disagrees check

    if agreement.enabled(spec) and not stats["stopped_by"]:  # a cap stops requests, this one too
        ds, extra["teacher_agreement"] = agreement.label_rows(spec, endpoint, ds, st.dir)
    if spec.generation.preferences.enabled:
        from curation.generation.judge import collect_prefs

        prefs, agree = collect_prefs(spec, endpoint, ds, st.dir)
        if agree:  # classification: share of candidate answers agreeing with the row's label
            ds = ds.add_column("judge_score", [agree.get(i) for i in ds["id"]])
        if len(prefs):
            st.save("prefs", prefs)
        extra["prefs"] = {"pairs": len(prefs), "judged": sum(k == "judged" for k in prefs["kind"]),
                          "hard_negatives": sum(k == "hard_negative" for k in prefs["kind"])}
    st.save("rows", ds)
    ok = [s == "ok" for s in ds["status"]]
    p_tok, c_tok = sum(ds["prompt_tokens"]), sum(ds["completion_tokens"])
    price = budget.prices(spec)
    spent = budget.spent(st.dir)
    fc_path = st.dir / "forecast.json"
    if fc_path.exists():
        import json

        fc = json.loads(fc_path.read_text())
        extra["forecast"] = {"tokens": fc["total"]["tokens"], "cost_usd": fc["total"]["cost_usd"],
                             "method": fc["method"]}
    caps = generation_caps(spec, max_cost, max_tokens)
    m = st.finish(teacher=endpoint.public(), teacher_model=endpoint.model, requests=len(ds), ok=sum(ok),
                  failed=len(ds) - sum(ok), tokens={"prompt": p_tok, "completion": c_tok},
                  cost_usd=round(budget.cost(p_tok, c_tok, price), 6), price_per_m={"input": price[0], "output": price[1]},
                  spent=spent, caps={"max_cost_usd": caps["max_cost"], "max_tokens": caps["max_tokens"]},
                  failures=_reasons(ds), first_failure=next((e for e in ds["error"] if e), None), **extra, **stats)
    if failed_all:
        raise GenerationFailed(failed_all)
    if stats["stopped_by"]:
        console.print(f"[yellow]generate: stopped by {stats['stopped_by']} (spent {spent['tokens']} tokens, "
                      f"${spent['cost_usd']:.4f}); {stats['pending_shards']} shard(s) pending: rerun with a higher cap "
                      "to continue[/]")
    elif stats["pending_shards"]:
        console.print(f"[yellow]generate: {stats['pending_shards']} shard(s) still pending (teacher errors); "
                      "rerun to finish them[/]")
    else:
        console.print(f"generate: {len(ds)} rows ({sum(ok)} ok) in {stats['seconds']:.0f}s, "
                      f"{p_tok} prompt + {c_tok} completion tokens, ${m['cost_usd']:.4f}")
    return m


def _reasons(ds) -> dict[str, int]:
    """Failed rows by reason kind (the text before the first colon)."""
    out: dict[str, int] = {}
    for s, e in zip(ds["status"], ds["error"]):
        if s != "ok":
            k = (e or "unknown").split(":")[0].split(" (")[0]
            out[k] = out.get(k, 0) + 1
    return out


def _reference(spec, r: Run, locked) -> list[str] | None:
    """traffic.reference_texts when curate compares rows with real traffic
    (`curation.filters.min_traffic_similarity`, or `max_per_label_keeps: most_traffic_like`), the
    dev split's texts excluded. `locked`: the locked rows (loaded once by the caller)."""
    if not spec.curation.filters.uses_traffic_reference:
        return None
    from curation.traffic import dev_split, reference_texts

    dev = dev_split(r.root)
    return reference_texts(spec, locked, set(dev[0]["text"]) if dev else set())


def curate_stage(spec: TaskSpec, run: Path) -> dict:
    from distilforge.stage import scoped

    spec = scoped(spec, "curate")  # only the spec blocks PIPELINE declares for this stage
    from curation.curate import curate
    from curation.traffic import traffic_rows, with_traffic
    from heldout.lock import load_locked, read_lock

    r = Run(run)
    gen_hash = output_hash(r.generate, "rows")
    lock_info = read_lock(r.heldout)
    traffic = traffic_rows(run)  # (rows, hash) when the traffic stage labelled real inputs
    # the filter's real messages are an input (their hash), so with it on the locked rows load here, once
    locked = load_locked(r.heldout) if spec.curation.filters.uses_traffic_reference else None
    reference = _reference(spec, r, locked)  # real messages rows are compared with, or None
    st = Stage(r.curate, "curate", {"generate": gen_hash, "heldout": lock_info["sha256"],
                                    **({"traffic": traffic[1]} if traffic else {}),
                                    **({"traffic_reference": sha256_json(reference)} if reference else {})},
               {"curation": semantic_dump(spec.curation), "labels": spec.label_names})
    if st.is_current():
        console.print("curate: inputs unchanged, skipped")
        return read_manifest(st.dir)
    st.begin()
    raw = load_dataset_dir(r.generated_rows)
    locked = locked if locked is not None else load_locked(r.heldout)
    if traffic and len(traffic[0]):  # real rows go through the same funnel as generated ones
        raw = with_traffic(raw, traffic[0])
    if spec.backend.kind == "ray":  # same rows and reasons, spread over a Ray cluster (docs/scaling.md)
        from curation.raybackend import curate_ray

        res = curate_ray(raw, spec, heldout=locked, traffic_texts=reference)
    else:
        res = curate(raw, spec, heldout=locked, traffic_texts=reference)
    st.save("curated", res.kept)
    st.save("rejected", res.rejected)
    reasons = res.reasons() if hasattr(res, "reasons") else {}
    m = st.finish(funnel=res.funnel, rejected_by_reason=reasons, kept=len(res.kept), dropped=len(res.rejected),
                  under_filled=res.under_filled, info=res.info, backend=spec.backend.kind,
                  **({"traffic": {"rows": len(traffic[0]), "kept": sum(x == "traffic" for x in res.kept["strategy"])}}
                     if traffic else {}))
    from curation.curate import render_funnel

    Console().print(render_funnel(res.funnel, res.under_filled))
    return m
