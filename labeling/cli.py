"""`distilforge review ...`: run the embedded Argilla server (serve/status/stop).

`review_app` is mounted by distilforge's main CLI; later commands (push/pull/export) attach to
the same app. The server itself runs from `.venv-argilla` (see labeling/server/control.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from labeling.server import control

review_app = typer.Typer(help="Human review in Argilla (embedded server on SQLite, or a hosted one).",
                         no_args_is_help=True)

DataDirOption = typer.Option(None, "--data-dir", envvar="DISTILFORGE_ARGILLA_DIR",
                             help="Server data dir [default: ~/.local/share/distilforge/argilla].")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@review_app.command()
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
    try:
        info = control.start(data_dir, host=host, port=port)
    except control.ReviewServerError as exc:
        _fail(str(exc))
        return
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
            _fail("server stopped unexpectedly; see logs in the data dir")
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
