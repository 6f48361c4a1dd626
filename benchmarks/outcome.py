"""Benchmark (not a test): the student's held-out accuracy vs rows per label, per kind of data.

Why (docs/outcome.md): on Banking77-10 a SmolLM2 student scored 0.718 from 71 real rows, 0.710 from
72 synthetic rows and 0.870 from 318 real rows: the *amount* of data, not its kind, was the weak
part. This measures the learning curve behind that claim on the locked Banking77-10 test rows, each
point with a bootstrap 95 % CI, for: `synthetic` (a: generate + curate), `agreement` (b: the same
generation + teacher agreement, disagreeing rows dropped), `unfiltered` ((a)'s rows before curate,
decontaminated only, as many per label as (a): equal training compute), `traffic` (c: the traffic
stage over Banking77 train, teacher labels), `gold` (d: the same real rows, gold labels) and `base`
(the untrained base model, 0 rows). A size is a seeded, nested per-label subset of a pool.

Only the pipeline's own stage functions run (heldout lock, generate, curate, traffic, train), on
scratch run dirs bound by runctx.prepare to WORK/task.yaml (examples/banking77/task.yaml plus one
profile per pool); a point's subset reaches `train` as its run's curate output (a Stage manifest),
so the train stage's contamination gate checks it; scoring is heldout.evaluate's `score_local` +
`summarize` with the prompt the adapter was trained with. Every stage skips finished work and
every point is cached, so a rerun resumes; each point lands in the results file atomically with
its command line and `uptime` before it started. CPU-minutes per point = (train stage + scoring
wall time) x torch threads; each pool's teacher time is reported once (wall s x replicas).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/outcome.py            # the real thing: hours
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/outcome.py --quick    # smoke test of the script
    .venv/bin/python benchmarks/outcome.py --report [--quick]            # markdown tables

Default: teacher qwen2.5-coder-1.5b, student smollm2-135m, sizes 8/16/32/64, all conditions, all
400 locked rows -> results/outcome.json. `--quick`: 0.5B teacher (a running server is reused),
tiny-random student, sizes 2/4, synthetic/traffic/gold, 1 epoch, 40 seeded locked rows ->
results/outcome_quick.json. `--teacher qwen2.5-coder-0.5b --results F`: the same with every pool
from another embedded teacher (its own cache under WORK), e.g. to see whether curation matters more
when the teacher is weaker. Loop rounds are not run here; `--loop-run RUN` records RUN/loop.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if (REPO.parent / "shared" / "data").is_dir():  # the spec's relative default depends on the cwd
    os.environ.setdefault("DISTILFORGE_DATA", str((REPO.parent / "shared" / "data").resolve()))

TASK = REPO / "examples" / "banking77" / "task.yaml"
RESULTS = REPO / "benchmarks" / "results"
WORK = Path("~/.cache/distilforge/outcome").expanduser()
TRAFFIC_FACTOR = 10  # traffic rows the teacher labels: 10 x the largest size (10 labels)
CONDITIONS = {
    "synthetic": "(a) teacher-generated, curated",
    "agreement": "(b) generated + teacher agreement (disagreeing rows dropped), curated",
    "likeness": "(a)'s generated rows, curated with the real-traffic likeness filter too (min_traffic_similarity 0.5)",
    "select": "(a)'s generated rows, curated, then the N a label nearest real traffic (max_per_label N, "
              "max_per_label_keeps most_traffic_like)",
    "unfiltered": "(a)'s generated rows before curate (decontaminated only), same rows per label as (a)",
    "traffic": "(c) real traffic (Banking77 train), teacher labels",
    "gold": "(d) the same real rows, gold labels (reference)",
}
PAIRS = [("traffic", "synthetic", "real inputs vs generated ones, both teacher-labelled"),
         ("gold", "traffic", "gold labels vs the teacher's on the same texts"),
         ("agreement", "synthetic", "what teacher agreement buys"),
         ("agreement", "unfiltered", "curate with teacher agreement vs no curation; equal rows where both have them"),
         ("likeness", "synthetic", "what the real-traffic likeness filter buys over the other filters"),
         ("likeness", "unfiltered", "curate with the likeness filter vs no curation; equal rows where both have them"),
         ("select", "unfiltered", "curate keeping the rows nearest real traffic vs no curation; equal rows"),
         ("select", "synthetic", "the rows nearest real traffic vs a seeded draw of the curated rows")]
LIKENESS = 0.5  # curation.filters.min_traffic_similarity of the `likeness` pool (docs/outcome.md)
QUICK = {"sizes": [2, 4], "conditions": ["synthetic", "traffic", "gold"], "score_rows": 40}
FULL = {"sizes": [8, 16, 32, 64], "conditions": list(CONDITIONS), "score_rows": None}
# (a)'s rows with every curate step off but the validity checks and held-out decontamination
UNFILTERED = {"filters": {"min_chars": 0, "min_tokens": 0, "max_chars": 100000, "max_tokens": 100000,
                          "drop_non_printable": False, "max_repetition": None, "language": None,
                          "drop_refusals": False, "drop_meta_commentary": False, "prompt_echo_ngram": None,
                          "drop_wrong_voice": False, "label_leak": False, "judge_min_score": None},
              "dedup": {"exact": False, "minhash": False, "semantic": False}}
LOOP_COMMAND = ("distilforge run examples/banking77/task.yaml --profile demo --out runs/outcome-loop && "
                "distilforge loop runs/outcome-loop --rounds 2 && "
                ".venv/bin/python benchmarks/outcome.py --loop-run runs/outcome-loop")


def _deep(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def profiles(quick: bool, sizes: list[int], score_rows: int | None, teacher: str | None = None,
             seed: int = 0, pool: int | None = None, select: bool = False) -> dict[str, dict]:
    """One spec profile per pool (+ `train` for the points), over examples/banking77/task.yaml;
    `teacher`: another embedded teacher model for every pool (e.g. the weaker 0.5B); `seed` != 0:
    a repeat, whose points train with `training.seed` = seed (profile `train-s<seed>`); `select`:
    one `select-<size>` pool per size (curate keeps the `size` rows a label nearest real traffic)."""
    # the demo profile's teacher settings: 4 inputs per generation request, label questions without
    # the grammar unless an answer is no label (examples/banking77/task.yaml, profile demo)
    pool = pool or max(sizes)  # rows a label each pool is built for (--pool-per-label; default the largest size)
    base: dict = {"generation": {"per_label": pool, "inputs_per_request": 4},
                  "teacher": {"structured_output": "fallback"}, "traffic": None, "eval": {"teacher": False}}
    if quick:
        base = _deep(base, {"teacher": {"model": "qwen2.5-coder-0.5b", "max_tokens": 64, "replicas": 1},
                            "student": {"base": "tiny-random"}, "training": {"epochs": 1}})
    if teacher:
        base = _deep(base, {"teacher": {"model": teacher}})
    if score_rows:
        base = _deep(base, {"eval": {"max_rows": score_rows}})
    n = TRAFFIC_FACTOR * pool
    repeat = {f"outcome-{train_profile(seed)}": _deep(base, {"training": {"seed": seed}})} if seed else {}
    # the traffic block is the reference only (no traffic stage); no likeness threshold: every pool
    # keeps `size` rows a label, the ones nearest real traffic, so the points train on equal rows
    sel = {f"outcome-select-{n}": _deep(base, {"traffic": _task_traffic(), "curation": {"filters": {
        "max_per_label": n, "max_per_label_keeps": "most_traffic_like"}}}) for n in sizes} if select else {}
    return {"outcome-train": base, **repeat, "outcome-synthetic": base,
            "outcome-agreement": _deep(base, {"generation": {"teacher_agreement": True},
                                              "curation": {"filters": {"teacher_disagreement": "drop"}}}),
            "outcome-unfiltered": _deep(base, {"curation": UNFILTERED}),
            # the task's traffic block is the reference only: this pool runs no traffic stage
            "outcome-likeness": _deep(base, {"traffic": _task_traffic(),
                                             "curation": {"filters": {"min_traffic_similarity": LIKENESS}}}),
            "outcome-traffic": _deep(base, {"traffic": {"max_rows": n, "dev_rows": 0}}),
            "outcome-gold": _deep(base, {"traffic": {"max_rows": 0, "dev_rows": n, "dev_labels": "gold"}}), **sel}


def _task_traffic() -> dict:
    """examples/banking77/task.yaml's `traffic:` block (Banking77 train texts of these intents)."""
    from distilforge.yamlfile import read_yaml

    return read_yaml(TASK, "task spec")["traffic"]


def train_profile(seed: int) -> str:
    """The points' profile: seed 0 keeps the spec's training seed; a repeat trains with its own."""
    return f"train-s{seed}" if seed else "train"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def subset(ds, per_label: int | dict[str, int], seed: int):
    """Per label, the first `per_label` rows (or `per_label[label]`) in the order of a hash of
    (seed, id): stable across reruns, independent of row order, nested (8 rows are in the 16)."""
    by: dict[str, list[int]] = {}
    for i, lab in enumerate(ds["label"]):
        by.setdefault(lab, []).append(i)
    ids = ds["id"]
    keep: list[int] = []
    for lab, idx in by.items():
        k = per_label.get(lab, 0) if isinstance(per_label, dict) else per_label
        keep += sorted(idx, key=lambda i: hashlib.sha256(f"{seed}|{ids[i]}".encode()).hexdigest())[:k]
    return ds.select(sorted(keep))


class Bench:
    """The work dir, the results file and the teacher (started only when a pool needs it)."""

    def __init__(self, a, stack: ExitStack):
        from rich.console import Console

        self.a, self.stack, self.console = a, stack, Console(stderr=True)
        # another teacher: other pools and points, so a cache of its own
        self.work = Path(a.work).expanduser() / (("quick" if a.quick else "full") + (f"-{a.teacher}" if a.teacher else ""))
        self.results = Path(a.results)
        threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if os.environ.get("OMP_NUM_THREADS") else ""
        self.command = threads + " ".join(shlex.quote(x) for x in [".venv/bin/python", "benchmarks/outcome.py", *sys.argv[1:]])
        self.spec_file = self.work / "task.yaml"
        self._ep = None
        self.teacher = stack.enter_context(ExitStack())  # closed once the pools are built: stops our teacher

    def write_spec_file(self) -> None:
        from distilforge.atomic import atomic_write_text
        from distilforge.yamlfile import read_yaml
        import yaml

        raw = read_yaml(TASK, "task spec")
        raw["profiles"] = profiles(self.a.quick, self.a.sizes, self.a.score_rows, self.a.teacher, self.a.seed,
                                   self.a.pool_per_label, "select" in self.a.conditions)
        atomic_write_text(self.spec_file, "# written by benchmarks/outcome.py: examples/banking77/task.yaml, "
                          "one profile per data pool\n" + yaml.safe_dump(raw, sort_keys=False))

    def spec(self, run: Path, profile: str):
        from distilforge.runctx import prepare

        return prepare(run, self.spec_file, f"outcome-{profile}", respec=True, create=True)

    def endpoint(self, spec):
        if self._ep is None:
            from distilforge.teacher import teacher_endpoint

            self._ep = self.teacher.enter_context(teacher_endpoint(spec.teacher, self.work))
        return self._ep

    def stop_teacher(self) -> None:
        self.teacher.close()  # stops the servers this run started (a shared running one stays)
        self._ep = None

    # ------------------------------------------------------------ the results file
    def _read(self) -> dict:
        from distilforge.manifest import read_json

        return read_json(self.results) or {}

    def save(self, **parts) -> None:
        """Merge into the results file atomically: `pool`/`point` records replace the same key."""
        from distilforge.atomic import atomic_write_json

        data = self._read()
        head = parts.get("header", {})
        if head.get("command"):  # every run that added points, not only the last
            cmds = data.get("commands") or ([data["command"]] if data.get("command") else [])
            data["commands"] = cmds + ([head["command"]] if head["command"] not in cmds else [])
        data.update({"benchmark": "benchmarks/outcome.py", "mode": "quick" if self.a.quick else "full",
                     "task": "examples/banking77/task.yaml", "n_labels": 10, "what": CONDITIONS,
                     **({"teacher_model": self.a.teacher} if self.a.teacher else {}),
                     **parts.get("header", {})})
        if "pool" in parts:
            data.setdefault("pools", {})[parts["pool"]["name"]] = parts["pool"]
        if "point" in parts:
            p = parts["point"]
            data["points"] = [x for x in data.get("points", []) if x["key"] != p["key"]] + [p]
        for name, rec in parts.get("loops", {}).items():
            data[name] = rec
        data.setdefault("loop", {"status": "not run", "why": "each round is a full generate + curate + train + eval "
                                 "(hours on this box); not part of this benchmark's budget", "command": LOOP_COMMAND})
        atomic_write_json(self.results, data)


# ---------------------------------------------------------------- pools

def _lock(spec, run: Path) -> dict:
    from heldout.stages import lock_stage

    return lock_stage(spec, run)


def _generate(b: Bench, spec, run: Path) -> None:
    from curation.stages import generate_stage
    from distilforge.errors import RuntimeFailure
    from distilforge.records import GenerationResult

    for _ in range(2):  # a teacher hiccup leaves shards pending; one rerun asks for them again
        generate_stage(spec, run, b.endpoint(spec))
        gen = GenerationResult.read(run)
        if gen and not gen.pending_shards:
            return
    raise RuntimeFailure(f"{run}: generation still has pending shards; rerun benchmarks/outcome.py to finish them")


def _sync_shards(src: Path, dst: Path) -> int:
    """Copy committed generation shards src -> dst (the pipeline's exactly-once commit), so a pool
    built on (a)'s generation sees the very same rows and asks the teacher for none of them again."""
    from curation.generation.gensteps import commit, committed_shards, read_shard, shard_path

    new = sorted(committed_shards(src) - committed_shards(dst))
    for sid in new:
        commit(shard_path(dst, sid), read_shard(src, sid))
    return len(new)


def build_pool(b: Bench, name: str) -> tuple[object, dict]:
    """(rows, record) of one pool; every stage skips what its run dir already holds."""
    import datasets

    from curation.formats import completion_text
    from curation.stages import curate_stage
    from curation.traffic import traffic_stage
    from distilforge.atomic import atomic_copy_dir
    from distilforge.layout import Run
    from distilforge.manifest import dataset_hash, output_hash, read_manifest, verified_output
    from distilforge.records import GenerationResult, StageManifest

    run = b.work / "pools" / name
    spec = b.spec(run, name)
    _lock(spec, run)
    r = Run(run)
    rec: dict = {"name": name, "run": str(run), "teacher_model": spec.teacher.model, "teacher_seconds": 0.0}
    syn = Run(b.work / "pools" / "synthetic")
    derived = name == "likeness" or name.startswith("select-")  # (a)'s rows, curated otherwise
    if name in ("synthetic", "agreement") or derived:
        if name != "synthetic":
            _sync_shards(syn.generate, r.generate)
        _generate(b, spec, run)
        gen = GenerationResult.read(run)
        if name == "synthetic":
            rec.update(teacher_seconds=gen.seconds, teacher_requests=gen.requests, teacher_ok=gen.ok,
                       teacher_tokens=gen.tokens.model_dump(exclude_none=True) if gen.tokens else None)
        elif name == "likeness":
            rec["note"] = "no teacher time of its own: (a)'s generated rows, curated with the likeness filter"
        elif derived:
            rec["note"] = ("no teacher time of its own: (a)'s generated rows, curated, the rows a label nearest "
                           "real traffic kept")
        else:
            ta = gen.teacher_agreement or {}
            rec.update(teacher_seconds=ta.get("seconds", 0.0), teacher_requests=ta.get("rows"),
                       disagreement_rate=ta.get("disagreement_rate"),
                       note="teacher time: the blind labels only; the rows are (a)'s generation")
    if name == "unfiltered":
        if not (r.generate / "manifest.json").exists() or output_hash(r.generate, "rows") != output_hash(syn.generate, "rows"):
            atomic_copy_dir(syn.generate, r.generate)  # (a)'s generation as it is; curate alone differs
        rec["note"] = "no teacher time of its own: (a)'s generated rows"
    if name in ("synthetic", "agreement", "unfiltered") or derived:
        curate_stage(spec, run)
        cm = StageManifest.in_folder(r.curate)
        rows, _ = verified_output(r.curate, "curated", f"distilforge curate {run}")
        rec.update(curate_seconds=cm.seconds, funnel_dropped=(cm.model_extra or {}).get("rejected_by_reason"))
    else:
        traffic_stage(spec, run, b.endpoint(spec))
        m = read_manifest(r.traffic) or {}
        t = m.get("teacher") or {}
        rec.update(stage_seconds=m.get("seconds"), dropped=m.get("dropped"), teacher_vs_gold=m.get("teacher_vs_gold"))
        if name == "traffic":
            rows, _ = verified_output(r.traffic, "rows", f"distilforge traffic {run}")
            rec.update(teacher_seconds=t.get("seconds", 0.0), teacher_requests=t.get("rows"))
        else:
            dev, _ = verified_output(r.traffic, "dev", f"distilforge traffic {run}")
            rows = datasets.Dataset.from_list([
                {"id": i, "label": lab, "text": x, "prompt": spec.student_prompt(x),
                 "completion": [{"role": "assistant", "content": completion_text(spec, lab, "")}], "strategy": "gold"}
                for i, x, lab in zip(dev["id"], dev["text"], dev["label"])])
            rec["note"] = "gold labels: the teacher is asked nothing (same texts as the traffic pool, same seed)"
    # the embedded teacher is one single-thread server per replica
    rec.update(rows=len(rows), per_label=dict(sorted(Counter(rows["label"]).items())), sha256=dataset_hash(rows),
               teacher_cores=spec.teacher.replicas if spec.teacher.endpoint == "embedded" else None)
    rec["teacher_cpu_minutes"] = (round((rec["teacher_seconds"] or 0) * rec["teacher_cores"] / 60, 2)
                                  if rec["teacher_cores"] else None)
    return rows, rec


# ---------------------------------------------------------------- points

def _cores() -> int:
    import torch

    return torch.get_num_threads()


def score_point(spec, run: Path, adapter: str | None, train_manifest: dict | None = None) -> dict:
    """heldout.evaluate's scoring of one model on the (sampled) locked rows: the adapter with the
    prompt it was trained with (`train_manifest`: that adapter's, default RUN/train's), the base
    with the full prompt (as `eval` does)."""
    from heldout import evaluate as ev
    from heldout.lock import load_locked
    from heldout.stages import trained_prompt
    from distilforge.layout import Run
    from distilforge.manifest import read_manifest
    from distilforge.models import student_base_dir

    rows = load_locked(Run(run).heldout)
    rows = rows.select(ev.sample_rows(len(rows), spec.eval.max_rows))
    gold, texts, labels = list(rows["label"]), list(rows["text"]), spec.label_names
    if adapter is None:
        base, prompts, mode = student_base_dir(spec.student.base), [spec.student_prompt(t, "full") for t in texts], "full"
    else:
        tm = train_manifest or read_manifest(Run(run).train)
        mode, system = trained_prompt(spec, tm)  # what the adapter was trained with, as train recorded it
        base = tm["base_dir"]
        prompts = [[{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts]
    t0 = time.time()
    preds = ev.score_local(base, adapter, prompts, labels, f"scoring {run.name}")
    secs = time.time() - t0
    s = ev.summarize(preds, gold, labels)
    return {"accuracy": s["accuracy"], "accuracy_ci": s["accuracy_ci"], "macro_f1": s["macro_f1"], "n": len(gold),
            "prompt": mode, "correct": "".join(map(str, s["correct"])),
            "scored_rows_sha256": hashlib.sha256("\n".join(rows["id"]).encode()).hexdigest()[:16],
            "score_seconds": round(secs, 1)}


def run_point(b: Bench, cond: str, size: int, rows) -> dict:
    """Train on `rows` in the point's run dir (handed over as its curate output) and score it; a
    point already scored for the same adapter comes back from its cache."""
    from distilforge.atomic import atomic_write_json
    from distilforge.layout import Run
    from distilforge.manifest import Stage, dataset_hash, read_json
    from distilforge.records import TrainResult
    from training.stages import train_stage

    seed = b.a.seed  # a repeat (seed != 0) has run dirs of its own: another subset, another training seed
    run = b.work / "points" / (f"{cond}-{size}" + (f"-s{seed}" if seed else ""))
    cache = run / "outcome_point.json"
    load = uptime()
    spec = b.spec(run, train_profile(seed))
    _lock(spec, run)
    key = f"{cond}/{size}/seed{b.a.seed}"
    rec: dict = {"key": key, "condition": cond, "size": size, "seed": b.a.seed, "student": spec.student.base}
    if cond == "base":
        got = read_json(cache)
        if got and got.get("student") == spec.student.base and got.get("n_requested") == spec.eval.max_rows:
            return got
        rec.update(rows=0, per_label={}, train_seconds=0.0, n_requested=spec.eval.max_rows, **score_point(spec, run, None))
    else:
        r = Run(run)
        st = Stage(r.curate, "curate", {"outcome_subset": dataset_hash(rows)},
                   {"benchmark": "outcome", "condition": cond, "per_label": size, "seed": b.a.seed})
        same = st.is_current()
        if not same:
            st.begin()
            st.save("curated", rows)
            st.finish(kept=len(rows), note=f"benchmarks/outcome.py: {cond} pool, {size} rows per label (seeded subset)")
        train_stage(spec, run, resume=same)  # other rows in this dir: train afresh, never resume onto them
        tm = TrainResult.read(run)
        got = read_json(cache)
        if got and got.get("adapter_sha256") == tm.adapter_sha256 and got.get("n_requested") == spec.eval.max_rows:
            return got
        rec.update(rows=len(rows), per_label=dict(sorted(Counter(rows["label"]).items())),
                   adapter_sha256=tm.adapter_sha256, epochs=spec.training.epochs, steps=tm.steps,
                   train_loss=tm.train_loss, train_seconds=tm.seconds, n_requested=spec.eval.max_rows,
                   **score_point(spec, run, str(r.train / (tm.adapter or "adapter"))))
    cores = _cores()
    rec.update(cores=cores, cpu_minutes=round((rec["train_seconds"] + rec["score_seconds"]) * cores / 60, 2),
               command=b.command, load_before=load, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(cache, rec)
    return rec


# ---------------------------------------------------------------- the run

def plan(a) -> list[tuple[str, int]]:
    pts = [] if a.seed else [("base", 0)]  # the base model has no subset to repeat
    for size in a.sizes:
        pts += [(c, size) for c in a.conditions]
    return pts


def run_all(a) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from distilforge import runlock
    from distilforge.runctx import set_threads

    pools = [p for p in CONDITIONS if p in a.conditions and p != "select"]  # one pool per condition
    pools += [f"select-{s}" for s in a.sizes] if "select" in a.conditions else []  # select: one per size
    if ({"agreement", "unfiltered", "likeness"} & set(pools) or "select" in a.conditions) and "synthetic" not in pools:
        pools.insert(0, "synthetic")  # (b) and the unfiltered rows are built on (a)'s generation
    points = plan(a)
    with ExitStack() as stack:
        b = Bench(a, stack)
        b.work.mkdir(parents=True, exist_ok=True)
        stack.enter_context(runlock.acquire(b.work, "benchmarks/outcome.py"))
        set_threads()
        b.write_spec_file()
        b.save(header={"sizes": a.sizes, "conditions": a.conditions, "seed": a.seed, "work": str(b.work),
                       "spec": str(b.spec_file), "command": b.command})
        cons = b.console
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=cons, transient=False) as bar:
            task = bar.add_task("outcome", total=len(pools) + len(points))
            rows = {}
            for i, name in enumerate(pools, 1):
                bar.update(task, description=f"pool {name}")
                cons.print(f"outcome: pool {i}/{len(pools)}: {name}")
                rows[name], rec = build_pool(b, name)
                b.save(pool=rec)
                bar.advance(task)
            b.stop_teacher()  # training and scoring get the cores
            for j, (cond, size) in enumerate(points, 1):
                bar.update(task, description=f"{cond} @ {size}/label")
                cons.print(f"outcome: point {j}/{len(points)}: {cond}, {size} rows per label")
                if cond == "base":
                    data = None
                elif cond == "unfiltered":  # (a)'s row count per label at this size, from the unfiltered rows
                    want = Counter(subset(rows["synthetic"], size, a.seed)["label"])
                    data = subset(rows["unfiltered"], dict(want), a.seed)
                else:  # select: its size's pool holds `size` rows a label already (same rows every seed)
                    data = subset(rows[f"select-{size}" if cond == "select" else cond], size, a.seed)
                rec = run_point(b, cond, size, data)
                b.save(point=rec)
                cons.print(f"outcome: {cond} @ {size}/label: {rec['rows']} rows, accuracy {rec['accuracy']:.3f} "
                           f"{rec['accuracy_ci']} on {rec['n']} locked rows, {rec['cpu_minutes']} CPU-min")
                bar.advance(task)
    print(report(Path(a.results)))


def record_loop(a) -> None:
    """Record a finished `distilforge loop` run's rounds (RUN/loop.json) in the results file, under
    `--loop-name`. Each round's snapshot adapter (RUN/loop/round-<r>/) is scored again on the same
    locked rows, so the report can pair every round with round 0 row by row (loop.json keeps only
    each round's score: a paired difference is what says whether a round moved anything)."""
    import json

    from app.loop import read_rounds
    from distilforge.atomic import atomic_write_json
    from distilforge.manifest import read_json
    from distilforge.runctx import prepare

    run = Path(a.loop_run)
    rounds = read_rounds(run)
    if not rounds:
        raise SystemExit(f"{a.loop_run}: no loop rounds recorded (run `distilforge loop {a.loop_run} --rounds 2` first)")
    spec = prepare(run)
    out = []
    for x in rounds:
        rec = {k: x.get(k) for k in ("round", "rows", "targets", "dev", "test", "kept")}
        snap = run / "loop" / f"round-{x['round']}"
        tm = json.loads((snap / "train_manifest.json").read_text())
        cache = snap / "outcome_rescored.json"  # a rerun (e.g. to add --control-run) does not score again
        p = read_json(cache)
        if not p or p.get("adapter_sha256") != tm.get("adapter_sha256") or p.get("n_requested") != spec.eval.max_rows:
            p = {**score_point(spec, run, str(snap / "adapter"), tm), "adapter_sha256": tm.get("adapter_sha256"),
                 "n_requested": spec.eval.max_rows}
            atomic_write_json(cache, p)
        rec["rescored"] = {k: p[k] for k in ("accuracy", "accuracy_ci", "n", "correct", "scored_rows_sha256")}
        out.append(rec)
    command = a.loop_command or (LOOP_COMMAND if a.loop_name == "loop" else f"distilforge loop {run}")
    rec = {"status": "recorded", "run": str(run), "command": command, "rounds": out}
    if a.control_run:
        rec["control"] = control_point(Path(a.control_run), a.control_command)
    with ExitStack() as stack:
        Bench(a, stack).save(loops={a.loop_name: rec})
    print(report(Path(a.results)))


def control_point(run: Path, command: str | None) -> dict:
    """The untargeted control of a loop: a plain run whose generation asked for as many more rows
    per label as the loop's round 1 added, without targets. Its trained adapter is scored on the
    same locked rows, so round 1 can be paired with it: did *targeting* help, or only more rows?"""
    from distilforge.layout import Run
    from distilforge.manifest import read_manifest
    from distilforge.records import TrainResult
    from distilforge.runctx import prepare

    spec = prepare(run)
    tm = TrainResult.read(run)
    if tm is None:
        raise SystemExit(f"{run}: no trained model (run `distilforge run` on it first)")
    p = score_point(spec, run, str(Run(run).train / (tm.adapter or "adapter")), read_manifest(Run(run).train))
    return {"run": str(run), "command": command or f"distilforge run ... --out {run}", "rows": tm.rows,
            "adapter_sha256": tm.adapter_sha256,
            **{k: p[k] for k in ("accuracy", "accuracy_ci", "n", "correct", "scored_rows_sha256")}}


# ---------------------------------------------------------------- report

def _acc(p: dict | None) -> str:
    if not p or p.get("accuracy") is None:
        return "-"
    lo, hi = p.get("accuracy_ci") or (None, None)
    return f"{p['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{p['accuracy']:.3f}"


def _pool_table(pools: dict) -> list[str]:
    out = ["| pool | rows | fewest per label | teacher | teacher s | teacher CPU-min | note |", "|---|---|---|---|---|---|---|"]
    for name, p in pools.items():
        pl = p.get("per_label") or {}
        few = min(pl.values()) if pl else 0
        out.append(f"| {name} | {p.get('rows')} | {few} | {p.get('teacher_model')} | {p.get('teacher_seconds') or 0:.0f} | "
                   f"{p.get('teacher_cpu_minutes')} | {p.get('note', '')} |")
    return out


def _repeats(points: list[dict], sizes: list[int]) -> list[str]:
    """Curation variants against unfiltered (and likeness against curated) over repeats: each seed draws another subset of the
    same pools and trains with another seed, so the spread across seeds is the training-and-draw
    noise that the paired bootstrap on test rows does not see. Mean difference, its SD across seeds
    and a t interval over seeds (wide with few seeds, and honest about it)."""
    import statistics

    from scipy import stats

    by: dict[tuple[str, int], dict[int, dict]] = {}
    for p in points:
        by.setdefault((p["condition"], p["size"]), {})[p.get("seed", 0)] = p
    out, name = [], {"synthetic": "curated"}
    for a_, b_ in (("synthetic", "unfiltered"), ("agreement", "unfiltered"), ("likeness", "unfiltered"),
                   ("likeness", "synthetic"), ("select", "unfiltered"), ("select", "synthetic")):
        for s in sizes:
            A, B = by.get((a_, s), {}), by.get((b_, s), {})
            seeds = sorted(k for k in set(A) & set(B) if A[k]["scored_rows_sha256"] == B[k]["scored_rows_sha256"])
            if len(seeds) < 2:
                continue
            d = [A[k]["accuracy"] - B[k]["accuracy"] for k in seeds]
            m, sd = statistics.mean(d), statistics.stdev(d)
            h = stats.t.ppf(0.975, len(d) - 1) * sd / len(d) ** 0.5
            out.append(f"| {name.get(a_, a_)} - {name.get(b_, b_)} | {s} | {len(seeds)} | "
                       + ", ".join(f"{x:+.3f}" for x in d) + f" | {m:+.3f} | {sd:.3f} | [{m - h:+.3f}, {m + h:+.3f}] | "
                       f"{sum(x > 0 for x in d)}/{len(d)} |")
    if not out:
        return []
    return ["", "Repeats (`--seed N`: another per-label subset of the same pools and another training seed; "
            "the spread across seeds is the noise a single run's paired CI does not cover):", "",
            "| difference | rows / label | seeds | per seed | mean | SD | 95 % t-interval over seeds | seeds > 0 |",
            "|---|---|---|---|---|---|---|---|", *out]


def report(path: Path) -> str:
    """The results file as markdown tables (accuracy, CPU-minutes, pools, curated vs unfiltered, loop)."""
    from heldout.evaluate import paired_bootstrap

    data = json.loads(path.read_text())
    # the tables are seed 0's points (the base model and the first draw); repeats get a table of their own
    pts = {(p["condition"], p["size"]): p for p in data.get("points", []) if not p.get("seed")}
    sizes = sorted({s for c, s in pts if c != "base"})
    conds = [c for c in CONDITIONS if any(k[0] == c for k in pts)]
    n = next((p["n"] for p in pts.values()), "?")
    cmds = data.get("commands") or [data.get("command", "")]
    who = f", every pool from the {data['teacher_model']} teacher" if data.get("teacher_model") else ""
    out = [f"Mode `{data.get('mode')}`{who}, {n} locked rows scored per point; accuracy [bootstrap 95 % CI]; "
           + "; ".join(f"`{c}`" for c in cmds), ""]
    head = "| condition | " + " | ".join(f"{s} / label" for s in sizes) + " |"
    sep = "|---|" + "---|" * len(sizes)
    rows = []
    for c in conds:
        cells = []
        for s in sizes:
            p = pts.get((c, s))
            short = p is not None and p["rows"] < s * data.get("n_labels", 10)  # a label had fewer rows
            cells.append(_acc(p) + (f" ({p['rows']} rows)" if short else ""))
        rows.append(f"| {c}: {CONDITIONS[c]} | " + " | ".join(cells) + " |")
    out += [head, sep, *rows, ""]
    if ("base", 0) in pts:
        out += [f"Untrained base model ({pts[('base', 0)]['student']}, full prompt): {_acc(pts[('base', 0)])}.", ""]
    out += ["CPU-minutes per point (train stage + scoring wall time x torch threads):", "", head, sep]
    out += [f"| {c} | " + " | ".join(str(pts[(c, s)]["cpu_minutes"]) if (c, s) in pts else "-" for s in sizes) + " |"
            for c in conds]
    out += ["", "Data pools (teacher time reported once per pool; CPU-min = teacher wall seconds x replicas):", "",
            *_pool_table(data.get("pools") or {})]
    if data.get("pools_earlier"):  # the pools the smaller sizes were drawn from, before the pools grew
        out += ["", data.get("pools_earlier_note", "Earlier pools:"), "", *_pool_table(data["pools_earlier"])]
    pairs = [(s, pts[("synthetic", s)], pts[("unfiltered", s)]) for s in sizes
             if ("synthetic", s) in pts and ("unfiltered", s) in pts]
    if pairs:
        out += ["", "Curated vs unfiltered at equal training compute (same rows per label; paired bootstrap on the same "
                "locked rows):", "", "| rows / label | rows | curated | unfiltered | curated - unfiltered [95 % CI] | p |",
                "|---|---|---|---|---|---|"]
        for s, cu, un in pairs:
            if cu["scored_rows_sha256"] != un["scored_rows_sha256"]:
                continue
            d = paired_bootstrap([int(x) for x in cu["correct"]], [int(x) for x in un["correct"]])
            out.append(f"| {s} | {cu['rows']} | {_acc(cu)} | {_acc(un)} | {d['diff']:+.3f} [{d['ci'][0]:+.3f}, "
                       f"{d['ci'][1]:+.3f}] | {d['p_value']} |")
    diffs = []
    for a_, b_, what in PAIRS:
        for s in sizes:
            pa, pb = pts.get((a_, s)), pts.get((b_, s))
            if pa and pb and pa["scored_rows_sha256"] == pb["scored_rows_sha256"]:
                d = paired_bootstrap([int(x) for x in pa["correct"]], [int(x) for x in pb["correct"]])
                diffs.append(f"| {a_} - {b_} ({what}) | {s} | {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | "
                             f"{d['p_value']} |")
    out += _repeats(data.get("points", []), sizes)
    if diffs:
        out += ["", "Kind of data, paired on the same locked rows (the CI covers the test rows, not training "
                "randomness):", "", "| difference | rows / label | accuracy difference [95 % CI] | p |",
                "|---|---|---|---|", *diffs]
    loop = data.get("loop") or {}
    for name in ["loop"] + sorted(k for k in data if k.startswith("loop_")):
        lp = data.get(name) or {}
        if not lp.get("rounds"):
            continue
        out += ["", f"Loop rounds ({lp.get('run')}; `{lp.get('command')}`; kept = best on dev):", "",
                "| round | rows | test accuracy | dev accuracy | kept | test vs round 0, paired [95 % CI] |",
                "|---|---|---|---|---|---|"]
        r0 = (lp["rounds"][0].get("rescored") or {})
        for x in lp["rounds"]:
            rs, cell = x.get("rescored") or {}, ""
            if x["round"] and rs and r0 and rs["scored_rows_sha256"] == r0["scored_rows_sha256"]:
                d = paired_bootstrap([int(c) for c in rs["correct"]], [int(c) for c in r0["correct"]])
                cell = f"{d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], p {d['p_value']}"
            out.append(f"| {x['round']} | {x.get('rows')} | {_acc(x.get('test'))} | {_acc(x.get('dev'))} | "
                       f"{'yes' if x.get('kept') else ''} | {cell} |")
        c = lp.get("control")
        if c:
            out += ["", f"Untargeted control (`{c['command']}`): {c['rows']} rows, test accuracy {_acc(c)}."]
            for x in lp["rounds"][1:]:
                rs = x.get("rescored") or {}
                if rs and rs["scored_rows_sha256"] == c["scored_rows_sha256"]:
                    d = paired_bootstrap([int(v) for v in rs["correct"]], [int(v) for v in c["correct"]])
                    out.append(f"Round {x['round']} ({x.get('rows')} rows) - control, paired: {d['diff']:+.3f} "
                               f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], p {d['p_value']}.")
    if not loop.get("rounds"):
        out += ["", f"Loop rounds 0/1/2: {loop.get('status', 'not run')} ({loop.get('why', '')}); "
                f"to run: `{loop.get('command', LOOP_COMMAND)}`"]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 0.5B teacher, tiny random student, sizes 2/4")
    ap.add_argument("--report", action="store_true", help="print the markdown tables of the results file")
    ap.add_argument("--sizes", help="rows per label, comma-separated (default 8,16,32,64; quick 2,4)")
    ap.add_argument("--conditions", help=f"comma-separated, of: {', '.join(CONDITIONS)}")
    ap.add_argument("--seed", type=int, default=0, help="the per-label subset order; N != 0: a repeat "
                    "(points of its own, training seed N too; the report compares repeats)")
    ap.add_argument("--pool-per-label", type=int, help="rows a label each pool is built for (default: the "
                    "largest size); pass the earlier runs' value to add points without shrinking the pools")
    ap.add_argument("--teacher", help="embedded teacher model for every pool instead of the spec's (e.g. "
                    "qwen2.5-coder-0.5b: does curation matter more with a weaker teacher?); needs --results")
    ap.add_argument("--work", default=str(WORK), help="cache of every pool and point (resume: run again)")
    ap.add_argument("--results", help="results file (default benchmarks/results/outcome[_quick].json)")
    ap.add_argument("--loop-run", help="record RUN/loop.json's rounds (a finished `distilforge loop RUN`)")
    ap.add_argument("--loop-name", default="loop", help="where --loop-run goes in the results file: loop or loop_<name>")
    ap.add_argument("--loop-command", help="the commands that made --loop-run's run (recorded with it)")
    ap.add_argument("--control-run", help="with --loop-run: a plain run with as many untargeted rows as round 1 "
                    "(scored on the same locked rows and paired with each round)")
    ap.add_argument("--control-command", help="the commands that made --control-run's run")
    a = ap.parse_args()
    if a.teacher and not a.results and not a.report:
        ap.error("--teacher: pass --results too, so another teacher's points do not mix with outcome.json's")
    mode = QUICK if a.quick else FULL
    a.results = a.results or str(RESULTS / ("outcome_quick.json" if a.quick else "outcome.json"))
    a.sizes = sorted({int(x) for x in a.sizes.split(",")}) if a.sizes else mode["sizes"]
    a.conditions = a.conditions.split(",") if a.conditions else mode["conditions"]
    a.score_rows = mode["score_rows"]
    bad = [c for c in a.conditions if c not in CONDITIONS]
    if a.loop_name != "loop" and not a.loop_name.startswith("loop_"):
        ap.error("--loop-name: loop, or loop_<name>")
    if a.pool_per_label is not None and a.pool_per_label < max(a.sizes or [0]):
        ap.error(f"--pool-per-label {a.pool_per_label}: smaller than the largest size {max(a.sizes)}")
    if bad or not a.sizes or min(a.sizes) < 1:
        ap.error(f"--conditions: unknown {', '.join(bad)}" if bad else "--sizes: positive integers")
    if a.report:
        if not Path(a.results).exists():
            ap.error(f"{a.results}: no results yet (run without --report first)")
        print(report(Path(a.results)))
    elif a.loop_run:
        record_loop(a)
    else:
        run_all(a)


if __name__ == "__main__":
    main()
