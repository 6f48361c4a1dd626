"""The one `distilforge` command: each package's sub-app, composed, plus `run` (all stages)."""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time unless a user opts in
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DISTILABEL_LOG_LEVEL", "WARNING")  # our progress bar reports generation
# distilabel's pydantic models trip this on import; it says nothing about the user's run.
warnings.filterwarnings("ignore", message="The 'default' attribute with value None")

from app.registry import stages  # noqa: E402
from curation.cli import curate_cmd, generate_cmd, teacher_app, traffic_cmd  # noqa: E402
from distilforge.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USER, DistilforgeError, one_line  # noqa: E402
from distilforge.runctx import fail  # noqa: E402
from heldout.cli import eval_cmd, heldout_app  # noqa: E402
from decision.cli import abtest_cmd, decide_cmd, report_cmd  # noqa: E402
from training.cli import export_cmd, serve_cmd, train_cmd  # noqa: E402

app = typer.Typer(help="distilforge: teacher → curated data → LoRA student → locked held-out score → decision.",
                  no_args_is_help=True, pretty_exceptions_enable=False, pretty_exceptions_show_locals=False,
                  add_completion=False)
app.add_typer(teacher_app, name="teacher")
app.add_typer(heldout_app, name="heldout")  # the heldout stage: `heldout lock|verify`
# Stage commands in pipeline order, from the one registry `run` walks too (app/registry.py).
STAGE_COMMANDS = {"traffic": traffic_cmd, "generate": generate_cmd, "curate": curate_cmd, "train": train_cmd,
                  "eval": eval_cmd}
for _info, _ in stages():
    if _info.name in STAGE_COMMANDS:
        app.command(_info.name)(STAGE_COMMANDS[_info.name])
app.command("decide")(decide_cmd)
app.command("report")(report_cmd)
app.command("abtest")(abtest_cmd)
app.command("export")(export_cmd)
app.command("serve")(serve_cmd)
try:  # the review sub-app talks to Argilla; it is optional at import time
    from labeling.cli import review_app

    app.add_typer(review_app, name="review")
except ImportError:  # pragma: no cover
    pass


@app.command("stages")
def stages_cmd():
    """The stages `run` walks, in order: what each reads and which spec blocks feed it."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="distilforge stages (distilforge/stage.py)")
    for col in ("stage", "reads", "spec blocks", "teacher"):
        t.add_column(col)
    for info, _ in stages():
        t.add_row(info.name, ", ".join(info.reads) or "-", ", ".join(info.config) or "-", "yes" if info.teacher else "")
    Console().print(t)


@app.command("blindspots")
def blindspots(run: Path = typer.Argument(..., help="Run directory."),
               clusters: Optional[int] = typer.Option(None, "--clusters", help="Dev-split clusters (default ~2 per label).")):
    """Teacher blind spots: real dev-split regions the training rows don't cover, student errors → targets.yaml
    (the locked test set is never read here)."""
    from labeling.blindspots import blindspots_cmd

    blindspots_cmd(run, clusters)


@app.command("loop")
def loop_cmd(run: Path = typer.Argument(..., help="Run directory (made by `distilforge run`, spec with `traffic:`)."),
             rounds: int = typer.Option(1, "--rounds", min=1, help="Rounds after round 0 (the run as it stands).")):
    """Error-driven loop on the dev split: blind spots → targeted generation → curate → train → eval, per round
    (resumable; the round kept is chosen on dev, the locked test score is only recorded)."""
    from app.loop import run_loop

    run_loop(run, rounds)


@app.command("run")
def run_cmd(task: Path = typer.Argument(..., help="Task spec YAML."),
            profile: Optional[str] = typer.Option(None, "--profile", help="smoke | demo | any profile in the spec."),
            out: Optional[Path] = typer.Option(None, "--out", help="Run dir (default runs/<name>-<profile>)."),
            report: bool = typer.Option(True, help="Write RUN/report.html and the decision at the end."),
            respec: bool = typer.Option(False, "--respec", help="Rebind an existing run dir to this spec/profile "
                                        "when they differ from the ones it was made with (changed stages rerun).")):
    """Run every stage; stages whose inputs and config are unchanged are skipped."""
    from app.pipeline import run_all
    from distilforge.spec import SpecError, load_spec

    try:
        spec = load_spec(task, profile)
    except SpecError as e:
        fail(str(e))
    run = out or Path("runs") / f"{spec.name}-{profile or 'default'}"
    t0 = time.time()
    run_all(task, profile, run, report=report, respec=respec)
    typer.echo(f"run finished in {time.time() - t0:.0f}s → {run}")


_MAIN_PID = os.getpid()


def _exit_on_sigterm(signum, frame):  # noqa: ARG001
    """SIGTERM → SystemExit in the CLI process, so `finally` blocks run and an embedded teacher we
    started is stopped. Worker processes forked from it (distilabel's) inherit this handler: they
    must die the default way, or their pool shutdown hangs."""
    import signal

    if os.getpid() != _MAIN_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise SystemExit(128 + signum)


def _die(msg: str, code: int) -> None:
    from distilforge.secrets import redact

    sys.stderr.write(f"error: {redact(msg)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _os_error_line(e: OSError) -> tuple[str, int]:
    """`PermissionError(13, ..., 'runs/x')` → 'runs/x: permission denied' with a user/runtime code."""
    import errno

    what = (e.strerror or one_line(e)).lower()
    where = e.filename if e.filename is not None else ""
    if e.filename2:
        where = f"{where} -> {e.filename2}"
    user = e.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)
    return (f"{where}: {what}" if where else what), (EXIT_USER if user else EXIT_RUNTIME)


def _save_traceback(e: BaseException) -> Path | None:
    """The traceback of an unexpected error (no locals, keys scrubbed) for a bug report."""
    import traceback

    from distilforge.secrets import redact

    try:
        d = Path(os.environ.get("DISTILFORGE_CACHE") or Path.home() / ".cache" / "distilforge")
        d.mkdir(parents=True, exist_ok=True)
        p = d / "last-error.txt"
        p.write_text(redact("".join(traceback.format_exception(type(e), e, e.__traceback__))))
        return p
    except OSError:
        return None


def main() -> None:
    """Every known failure ends in one line on stderr and its exit code (distilforge/errors.py)."""
    import signal

    from distilforge.secrets import install_redaction

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    install_redaction()
    try:
        app()
    except DistilforgeError as e:
        _die(one_line(e), e.exit_code)
    except KeyboardInterrupt:
        _die("interrupted", EXIT_INTERRUPTED)
    except OSError as e:
        msg, code = _os_error_line(e)
        _die(msg, code)
    except Exception as e:  # noqa: BLE001 - a bug or an unmapped library error: still one line, no locals
        if os.environ.get("DISTILFORGE_DEBUG"):
            import traceback

            traceback.print_exc()
        if type(e).__module__.split(".")[0] == "openai":  # a transport error (calibration, judge): rc 1
            cause = e.__cause__ or e.__context__
            why = f" ({type(cause).__name__}: {one_line(cause)[:200]})" if cause is not None else ""
            _die(f"teacher request failed: {type(e).__name__}: {one_line(e)[:200]}{why}", EXIT_RUNTIME)
        saved = _save_traceback(e)
        _die(f"unexpected {type(e).__name__}: {one_line(e)[:300]}"
             + (f" (traceback in {saved})" if saved else ""), EXIT_RUNTIME)


if __name__ == "__main__":
    main()
