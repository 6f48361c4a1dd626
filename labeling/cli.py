"""`distilforge review ...`: the embedded Argilla server (serve/status/stop) and the review round trip
(push → curators answer in Argilla → pull → export).

`review_app` is mounted by the `distilforge` CLI (app/cli.py); later commands (push/pull/export) attach to
the same app. The server itself runs from `.venv-argilla` (see labeling/server/control.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distilforge.layout import Run
from distilforge.errors import DistilforgeError
from distilforge.runctx import ProfileOpt, RespecOpt, SpecOpt, cli_errors, fail, prepare
from labeling.server import control

review_app = typer.Typer(help="Human review in Argilla (embedded server on SQLite, or a hosted one).",
                         no_args_is_help=True, pretty_exceptions_show_locals=False)

DataDirOption = typer.Option(None, "--data-dir", envvar="DISTILFORGE_ARGILLA_DIR",
                             help="Server data dir [default: ~/.local/share/distilforge/argilla].")


@review_app.command()
@cli_errors
def serve(
    data_dir: Optional[Path] = DataDirOption,
    host: str = typer.Option(control.DEFAULT_HOST, help="Bind address (loopback by default)."),
    port: int = typer.Option(control.DEFAULT_PORT, help="HTTP port of the server and UI."),
    foreground: bool = typer.Option(False, "--foreground", help="Stay attached; Ctrl-C stops the server."),
) -> None:
    """Start the Argilla server + UI on SQLite (idempotent: reports a running server)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"warning: binding {host}: the server is reachable from other machines",
                    fg=typer.colors.YELLOW, err=True)
    info = control.start(data_dir, host=host, port=port)  # ReviewServerError: one line, rc 1
    typer.echo(f"Argilla running at {info['url']} (data: {info['data_dir']})")
    creds = info.get("new_credentials")
    if creds:
        typer.echo("Owner account created; shown only this once, stored 0600 in "
                   f"{info['credentials']}:")
        typer.echo(f"  username: {creds['username']}\n  password: {creds['password']}\n"
                   f"  api key:  {creds['api_key']}")
    else:
        typer.echo(f"Sign in with the owner account in {info['credentials']}")
    if foreground:
        import time

        try:
            while control.status(data_dir)["running"]:
                time.sleep(1)
            fail("server stopped unexpectedly; see logs in the data dir", 1)
        except KeyboardInterrupt:
            control.stop(data_dir)
            typer.echo("stopped")


@review_app.command()
def status(data_dir: Optional[Path] = DataDirOption) -> None:
    """Show whether the embedded server runs and where."""
    info = control.status(data_dir)
    if not info["running"]:
        typer.echo(f"not running (data: {info['data_dir']})")
        raise typer.Exit(3)
    health = "healthy" if info["healthy"] else "NOT RESPONDING"
    typer.echo(f"running at {info['url']}, {health} (pid {info['pid']}, engine {info['engine']}, "
               f"data: {info['data_dir']}, credentials: {info['credentials']})")
    if not info["healthy"]:
        raise typer.Exit(1)


@review_app.command()
def stop(data_dir: Optional[Path] = DataDirOption) -> None:
    """Stop the embedded server (data stays in the data dir)."""
    if control.stop(data_dir):
        typer.echo("stopped")
    else:
        typer.echo("not running")


# ---------------------------------------------------------------- push / pull / export

RunArg = typer.Argument(..., help="Run directory (with curate/ done).")
UrlOption = typer.Option(None, "--api-url", envvar="ARGILLA_API_URL",
                         help="A hosted Argilla [default: the embedded server].")
KeyOption = typer.Option(None, "--api-key", envvar="ARGILLA_API_KEY", show_default=False,
                         help="API key for --api-url (prefer the env var: options show in `ps`).")
WorkspaceOption = typer.Option(None, "--workspace", help="Argilla workspace [default: the first one].")
PrefixOption = typer.Option(None, "--dataset", help="Dataset name prefix [default: <task>-<run dir>].")


@review_app.command()
@cli_errors
def push(run: Path = RunArg, spec_file: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
         respec: bool = RespecOpt, api_url: Optional[str] = UrlOption, api_key: Optional[str] = KeyOption,
         data_dir: Optional[Path] = DataDirOption, workspace: Optional[str] = WorkspaceOption,
         dataset: Optional[str] = PrefixOption,
         batch_size: int = typer.Option(50, "--batch-size", help="Records per upsert request.")) -> None:
    """Push curated rows (and preference pairs) to Argilla for review; safe to rerun."""
    from labeling.push import push_run

    spec = prepare(run, spec_file, profile, respec=respec)
    try:
        report = push_run(run, spec, api_url=api_url, api_key=api_key, data_dir=data_dir, workspace=workspace,
                          prefix=dataset, batch_size=batch_size)
    except DistilforgeError:
        raise  # cli_errors: one line, the class's exit code
    except FileNotFoundError as exc:  # not one of ours (a library's): still one line, rc 2
        fail(str(exc))
    for fmt, r in report.items():
        typer.echo(f"{fmt}: {r['records']} records -> '{r['dataset']}' ({r['created']} new, {r['updated']} updated, "
                   f"{r['in_dataset']} in the dataset"
                   + (f", {r['kept_stale_with_responses']} stale with responses kept" if r["kept_stale_with_responses"]
                      else "") + ")")


@review_app.command()
@cli_errors
def pull(run: Path = RunArg, spec_file: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
         respec: bool = RespecOpt, api_url: Optional[str] = UrlOption, api_key: Optional[str] = KeyOption,
         data_dir: Optional[Path] = DataDirOption, workspace: Optional[str] = WorkspaceOption,
         dataset: Optional[str] = PrefixOption) -> None:
    """Pull every response (all users, all statuses) into RUN/review/reviews."""
    from labeling.pull import pull_run

    spec = prepare(run, spec_file, profile, respec=respec)
    counts = pull_run(run, spec, api_url=api_url, api_key=api_key, data_dir=data_dir, workspace=workspace,
                      prefix=dataset)
    for fmt, c in counts.items():
        statuses = ", ".join(f"{v} {k}" for k, v in sorted(c["by_status"].items())) or "none yet"
        typer.echo(f"{fmt}: {c['responses']} responses from {c['users']} user(s) on {c['records']} records "
                   f"({statuses}); {c['reviewed_records']} records reviewed")
    typer.echo(f"reviews: {Run(run).reviews}")


@review_app.command("export")
@cli_errors
def export_cmd(run: Path = RunArg, spec_file: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
               respec: bool = RespecOpt,
               policy: str = typer.Option("one", help="one | majority | unanimous (accepts needed to approve)."),
               min_reviewers: int = typer.Option(1, "--min-reviewers",
                                                 help="Rows with fewer submitted decisions stay undecided.")) -> None:
    """Approved rows (corrections applied) for training, rejected rows with reasons."""
    from labeling.export import export_run

    spec = prepare(run, spec_file, profile, respec=respec)
    try:
        m = export_run(run, spec, policy=policy, min_reviewers=min_reviewers)
    except DistilforgeError:
        raise  # cli_errors: one line, the class's exit code
    except FileNotFoundError as exc:  # not one of ours (a library's): still one line, rc 2
        fail(str(exc))
    ag = m["agreement"]
    kappa = f", reviewer {ag['method']} kappa {ag['kappa']}" if ag.get("kappa") is not None else ""
    typer.echo(f"export ({policy}): {m.get('approved', 0)} approved ({m.get('corrected', 0)} corrected), "
               f"{m.get('rejected', 0)} rejected, {m.get('undecided', 0)} undecided{kappa}")
    typer.echo(f"approved: {Run(run).approved} (train uses it from now on)")
