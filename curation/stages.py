"""Curation-side stages: `generate` (teacher → raw rows) and `curate` (raw → curated + rejected)."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from distilforge.manifest import Stage, load_dataset_dir, output_hash, read_manifest
from distilforge.spec import TaskSpec

console = Console(stderr=True)


def generation_config(spec: TaskSpec) -> dict:
    """What changes the generated rows (training/eval settings do not)."""
    t = spec.teacher
    return {"name": spec.name, "type": spec.type, "labels": [lab.model_dump() for lab in spec.labels],
            "instruction": spec.instruction, "generation": spec.generation.model_dump(),
            "teacher": {"model": t.model, "endpoint": t.endpoint, "base_url": t.base_url,
                        "temperature": t.temperature, "max_tokens": t.max_tokens}}


def generate_stage(spec: TaskSpec, run: Path, endpoint) -> dict:
    from curation.generate import collect, generate

    st = Stage(run / "generate", "generate", {}, generation_config(spec))
    m = read_manifest(st.dir)
    if st.is_current() and m and m.get("pending_shards") == 0:
        console.print("generate: inputs unchanged and all shards committed, skipped")
        return m
    st.begin()
    stats = generate(spec, endpoint, st.dir)
    ds = collect(spec, st.dir)
    st.save("rows", ds)
    ok = [r for r in ds if r["status"] == "ok"]
    p_tok, c_tok = sum(ds["prompt_tokens"]), sum(ds["completion_tokens"])
    cost = (p_tok * spec.teacher.price_in_per_m + c_tok * spec.teacher.price_out_per_m) / 1e6
    m = st.finish(teacher=endpoint.public(), teacher_model=endpoint.model, requests=len(ds), ok=len(ok),
                  failed=len(ds) - len(ok), tokens={"prompt": p_tok, "completion": c_tok},
                  cost_usd=round(cost, 6), **stats)
    if stats["pending_shards"]:
        console.print(f"[yellow]generate: {stats['pending_shards']} shard(s) still pending (teacher errors); "
                      "rerun to finish them[/]")
    else:
        console.print(f"generate: {len(ds)} rows ({len(ok)} ok) in {stats['seconds']:.0f}s, "
                      f"{p_tok} prompt + {c_tok} completion tokens")
    return m


def curate_stage(spec: TaskSpec, run: Path) -> dict:
    from curation.curate import curate
    from heldout.lock import load_locked, read_lock

    gen_hash = output_hash(run / "generate", "rows")
    lock_info = read_lock(run / "heldout")
    st = Stage(run / "curate", "curate", {"generate": gen_hash, "heldout": lock_info["sha256"]},
               {"curation": spec.curation.model_dump(), "labels": spec.label_names})
    if st.is_current():
        console.print("curate: inputs unchanged, skipped")
        return read_manifest(st.dir)
    st.begin()
    raw = load_dataset_dir(run / "generate" / "rows")
    res = curate(raw, spec, heldout=load_locked(run / "heldout"))
    st.save("curated", res.kept)
    st.save("rejected", res.rejected)
    reasons: dict[str, int] = {}
    for r in res.rejected["reason"]:
        reasons[r] = reasons.get(r, 0) + 1
    m = st.finish(funnel=res.funnel, rejected_by_reason=reasons, kept=len(res.kept), dropped=len(res.rejected))
    try:
        from curation.curate import render_funnel

        render_funnel(res.funnel)
    except ImportError:
        console.print(f"curate: kept {len(res.kept)} / {len(raw)}; dropped {reasons}")
    return m
