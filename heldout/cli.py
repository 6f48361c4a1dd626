"""`distilforge heldout lock|verify` and `distilforge eval`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distilforge.errors import DistilforgeError, RuntimeFailure
from distilforge.layout import Run
from distilforge.runctx import ProfileOpt, RespecOpt, RunArg, SpecOpt, cli_errors, fail, prepare, set_threads
from distilforge.spec import TaskSpec
from heldout.lock import HeldoutError

heldout_app = typer.Typer(help="Lock and verify the real held-out set.", no_args_is_help=True,
                          pretty_exceptions_show_locals=False)



@heldout_app.command("lock")
@cli_errors
def lock_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
             respec: bool = RespecOpt,
             force: bool = typer.Option(False, "--force", help="Replace an existing lock (re-baselines the set).")):
    """Import, canonicalize and hash the held-out rows."""
    from heldout.stages import lock_stage

    try:
        lock_stage(prepare(run, spec, profile, respec=respec, create=True), run, force=force)
    except FileNotFoundError as e:  # not one of ours (a dataset library's): still one line, rc 2
        fail(str(e))


@heldout_app.command("verify")
@cli_errors
def verify_cmd(run: Path = RunArg):
    """Fail loudly if the held-out source or its locked copy changed in any way."""
    from heldout.lock import verify

    try:
        s = prepare(run)
        info = verify(s.heldout, s, Run(run).heldout)
    except FileNotFoundError as e:  # not one of ours: still one line, rc 2
        fail(str(e))
    typer.echo(f"ok: {info['n']} rows, sha256 {info['sha256']}")


@cli_errors
def eval_cmd(run: Path = RunArg, spec: Optional[Path] = SpecOpt, profile: Optional[str] = ProfileOpt,
             respec: bool = RespecOpt,
             force: bool = typer.Option(False, "--force", help="Re-score even if inputs are unchanged."),
             endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Score this OpenAI-compatible endpoint "
                                                    "(e.g. a `distilforge serve` URL) instead; side by side with the student."),
             endpoint_name: str = typer.Option("served", "--endpoint-name", help="Key the endpoint's result is saved under."),
             endpoint_model: Optional[str] = typer.Option(None, "--endpoint-model",
                                                          help="Model name to request (default: the endpoint's first)."),
             endpoint_key_env: Optional[str] = typer.Option(None, "--endpoint-key-env",
                                                            help="Environment variable holding the endpoint's API key."),
             structured: str = typer.Option("none", "--structured", help="Endpoint output constraint: none (a served "
                                            "student constrains itself) | llama_cpp | openai."),
             max_per_label: Optional[int] = typer.Option(None, "--max-per-label", min=1,
                                                         help="Endpoint: score a seeded random N locked rows of each label.")):
    """Score base, student and teacher on the verified held-out set (eval/metrics.json)."""
    from distilforge.teacher import teacher_endpoint
    from heldout.stages import eval_stage

    try:
        s = prepare(run, spec, profile, respec=respec)
        from heldout.lock import verify

        verify(s.heldout, s, Run(run).heldout)  # refuse before starting anything
        if endpoint is not None:
            _eval_endpoint(s, run, endpoint, endpoint_name, endpoint_model, endpoint_key_env, structured, max_per_label)
            return
        set_threads()
        if s.eval.teacher:
            with teacher_endpoint(s.teacher, Run(run).eval) as ep:
                eval_stage(s, run, ep, force=force)
        else:
            eval_stage(s, run, None, force=force)
    except DistilforgeError:
        raise  # cli_errors: one line, the class's exit code (a teacher failure: 1)
    except FileNotFoundError as e:  # not one of ours (a library's): still one line, rc 2
        fail(str(e))


class EndpointError(RuntimeFailure, RuntimeError):
    """The scored endpoint failed (unreachable, HTTP errors after retries)."""


def _eval_endpoint(s: TaskSpec, run: Path, url: str, name: str, model: Optional[str], key_env: Optional[str],
                   structured: str, max_per_label: Optional[int]) -> None:
    """`eval --endpoint`: the served (or any) endpoint on the locked rows, next to the PyTorch student."""
    import os
    import re

    from distilforge.secrets import Secret
    from heldout import served

    if structured not in ("none", "llama_cpp", "openai"):
        raise HeldoutError(f"--structured: must be none, llama_cpp or openai, got {structured!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise HeldoutError(f"--endpoint-name: letters, digits, '.', '_' and '-' only, got {name!r}")
    if not url.startswith(("http://", "https://")):
        raise HeldoutError(f"--endpoint: an http(s) URL ending in /v1 is expected, got {url!r}")
    key = None
    if key_env:
        if not os.environ.get(key_env):
            raise HeldoutError(f"--endpoint-key-env: environment variable {key_env} is empty")
        key = Secret(os.environ[key_env])
    try:
        res = served.endpoint_eval(s, run, url, name=name, model=model, api_key=key, structured=structured,
                               max_per_label=max_per_label)
    except Exception as e:  # noqa: BLE001 - the client library's errors become one runtime line
        if type(e).__module__.split(".")[0] not in ("openai", "httpx"):
            raise
        raise EndpointError(f"endpoint {url}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    served.print_served(res)
    typer.echo(f"wrote {Run(run).endpoint_results / (name + '.json')}")
