"""`distilforge loop RUN --rounds N`: the error-driven data loop, chosen on the dev split.

    round 0     the run as it stands, every stage brought up to date (what `run` does, no report)
    round r ≥ 1 blind spots on the dev split → targets.yaml → targeted generation → curate → train → eval

Everything that *chooses* here looks only at the traffic stage's dev split (real inputs, kept
apart from training): blind spots cluster the dev rows and rank them by the student's errors
there, and the round kept for shipping is the one with the best student score on dev (eval's
headline metric: accuracy, micro field-F1 or win-or-tie against the teacher, by task type). The
locked test set is only scored by `eval`; each round's test score is recorded in RUN/loop.json
for the reader and never read back by anything that decides. Choosing rounds (or data) by the
test score would tune the data to the test set and leave no honest number to ship on.

Each round's record lands in RUN/loop.json when the round has finished, so a rerun continues at
the first round not recorded there; inside a round, every stage skips what is already done (a
killed generation resumes at its first uncommitted shard). Each round's kept adapter is copied to
RUN/loop/round-<r>/ so the round chosen on dev can be shipped even when a later one ran after it.

Targets accumulate in RUN/generate/targets.json. Blind spots on a fixed dev split can name the
same target again in a later round (a gap that is still open); asked again word for word it would
yield the same rows, so round r ≥ 2 rotates each target's keywords (`for_round`), which makes its
requests, and so its rows, new.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilforge import runlock
from distilforge.atomic import atomic_copy_dir, atomic_write_bytes, atomic_write_json
from distilforge.card import headline, metric_of
from distilforge.errors import UserError
from distilforge.layout import Run
from distilforge.manifest import MANIFEST, read_json
from distilforge.records import TrainResult
from distilforge.runctx import prepare, set_threads

console = Console(stderr=True)
NEEDS_DEV = ("loop: the loop chooses data on a real dev split, and this run has none: set `traffic:` with "
             "dev_rows > 0 in the spec; the locked test set is never used to choose data")


class LoopError(UserError, ValueError):
    """The loop cannot run on this run dir (no dev split, a broken loop.json)."""


def loop_file(run: Path) -> Path:
    return Run(run) / "loop.json"


def read_rounds(run: Path) -> list[dict]:
    """The rounds finished so far, in order (empty before the first)."""
    got = read_json(loop_file(run), LoopError, " (delete it to start the loop over)")
    if got is None:
        return []
    if not isinstance(got, list) or any(not isinstance(x, dict) or x.get("round") != i for i, x in enumerate(got)):
        raise LoopError(f"{loop_file(run)}: expected a list of rounds 0, 1, ... (delete it to start the loop over)")
    return got


def for_round(targets: list[dict], rnd: int) -> list[dict]:
    """Round r's version of blind spots' targets: keywords rotated by r - 1 (round 1 asks exactly
    what targets.yaml says, as `generate --targets` would)."""
    out = []
    for t in targets:
        kw = list(t["keywords"])
        s = (rnd - 1) % len(kw) if kw else 0
        out.append({**t, "keywords": kw[s:] + kw[:s]})
    return out


def _scored(entry: dict, metric: str) -> dict:
    """{metric, score, score_ci} of one metrics entry (+ accuracy, accuracy_ci for a classifier, the
    names loop.json has always had)."""
    value, ci = headline(entry)
    out = {"metric": metric, "score": value, "score_ci": ci}
    if metric == "accuracy":
        out.update(accuracy=value, accuracy_ci=ci)
    return out


def score(run: Path) -> dict:
    """The kept student's headline score on dev and on the locked test set, from eval's metrics.json."""
    m = read_json(Run(run).metrics, LoopError) or {}
    metric = metric_of(m)
    dev = (m.get("dev") or {}).get("student") or {}
    test = (m.get("models") or {}).get("student") or {}
    return {"dev": _scored(dev, metric), "test": _scored(test, metric)}


def _dev_score(x: dict) -> float | None:
    return headline(x.get("dev") or {})[0]


def choose(rounds: list[dict]) -> int | None:
    """The round to ship: best student score on dev (ties: the earlier, smaller one). The test
    score is not looked at."""
    scored = [x for x in rounds if _dev_score(x) is not None]
    return max(scored, key=lambda x: (_dev_score(x), -x["round"]))["round"] if scored else None


def _record(run: Path, rnd: int, targets: int, rounds: list[dict]) -> list[dict]:
    """Snapshot the kept adapter and append round `rnd` to loop.json (the round is then done)."""
    r = Run(run)
    tm = TrainResult.read(run, LoopError)
    if tm is None:
        raise LoopError(f"{TrainResult.path(run)}: no trained model to record for round {rnd}")
    snap = r / "loop" / f"round-{rnd}"
    atomic_copy_dir(r.train / (tm.adapter or "adapter"), snap / "adapter")
    atomic_write_bytes(snap / "train_manifest.json", (r.train / MANIFEST).read_bytes())
    entry = {"round": rnd, "rows": tm.rows, **score(run), "targets": targets, "targets_asked": _asked(run),
             "adapter": str((snap / "adapter").relative_to(r.root)), "adapter_sha256": tm.adapter_sha256}
    rounds = rounds + [entry]
    kept = choose(rounds)
    for x in rounds:
        x["kept"] = x["round"] == kept
    atomic_write_json(loop_file(run), rounds)
    return rounds


def _ci(s: dict) -> str:
    value, ci = headline(s)
    if value is None:
        return "-"
    lo, hi = ci or (None, None)
    return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")


def table(rounds: list[dict]) -> Table:
    metric = next((x["dev"]["metric"] for x in rounds if (x.get("dev") or {}).get("metric")), "accuracy")
    t = Table(title=f"loop (kept = best student {metric} on dev; the test score is recorded, never used to choose)")
    for col in ("round", "rows", "new targets", f"dev {metric}", f"test {metric}", "kept"):
        t.add_column(col)
    for x in rounds:
        t.add_row(str(x["round"]), str(x.get("rows")), str(x.get("targets")), _ci(x["dev"]), _ci(x["test"]),
                  "yes" if x.get("kept") else "")
    return t


def run_loop(run: Path, rounds: int) -> list[dict]:
    """Rounds 0..`rounds` (resuming after the last one recorded in loop.json); returns loop.json's rounds."""
    from distilforge.teacher import teacher_endpoint

    spec = prepare(run)
    if spec.traffic is None or not spec.traffic.dev_rows:
        raise LoopError(NEEDS_DEV)
    with runlock.acquire(run, "loop"):  # one writer per RUN until the loop returns
        set_threads()
        done = read_rounds(run)
        if len(done) > rounds:
            console.print(f"loop: {len(done) - 1} round(s) already recorded in {loop_file(run)}; nothing to do")
            return done
        with teacher_endpoint(spec.teacher, run) as ep:
            done = _rounds(spec, run, ep, done, rounds)
    Console().print(table(done))
    kept = next((x for x in done if x.get("kept")), None)
    if kept and kept is not done[-1]:
        console.print(f"loop: round {kept['round']} has the best dev score; its adapter is {kept['adapter']} "
                      f"(RUN/train holds round {done[-1]['round']}'s)")
    return done


def _rounds(spec, run: Path, ep, done: list[dict], rounds: int) -> list[dict]:
    from app.registry import RUNNERS, stages
    from labeling.blindspots import dev_split, load_targets as read_targets

    for rnd in range(len(done), rounds + 1):
        t0 = time.time()
        console.rule(f"[bold]loop round {rnd}/{rounds}" + (": the run as it stands" if rnd == 0 else ""))
        new = 0
        if rnd == 0:
            for info, fn in stages():
                if info.name != "blindspots":
                    console.rule(info.name)
                    fn(spec, run, ep)
            if dev_split(run) is None:
                raise LoopError(NEEDS_DEV)
        else:
            console.rule("blindspots (dev split)")
            RUNNERS["blindspots"](spec, run, ep)
            targets = read_targets(Run(run).targets_yaml) if Run(run).targets_yaml.exists() else []
            if not targets:
                console.print(f"loop: round {rnd}: blind spots found nothing to target on dev; stopping")
                break
            new = _add_targets(spec, run, rnd, done[-1].get("targets_asked", 0))
            if not new:
                console.print(f"loop: round {rnd}: every target was asked in an earlier round; stopping")
                break
            for name in ("generate", "curate", "train", "eval"):
                console.rule(name)
                RUNNERS[name](spec, run, ep)
        done = _record(run, rnd, new, done)
        x = done[-1]
        console.print(f"loop: round {rnd}/{rounds} done in {time.time() - t0:.0f}s: {x['rows']} training rows, "
                      f"dev {_ci(x['dev'])}, test {_ci(x['test'])} (recorded only)")
    return done


def _add_targets(spec, run: Path, rnd: int, asked_before: int) -> int:
    """Round `rnd`'s targets into RUN/generate/targets.json, checked as `generate --targets` checks
    them; returns how many the file holds beyond the `asked_before` of the last recorded round (a
    rerun after a crash finds its round's targets already there and still counts them as new)."""
    from curation.generation.generate import add_targets
    from curation.generation.plan import load_targets

    return len(add_targets(Run(run).generate, for_round(load_targets(Run(run).targets_yaml, spec), rnd))) - asked_before


def _asked(run: Path) -> int:
    from curation.generation.generate import saved_targets

    return len(saved_targets(Run(run).generate))
