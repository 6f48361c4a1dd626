"""Start, inspect and stop the embedded Argilla server from any Python (stdlib only).

The main venv cannot import argilla_server (conflicting pins), so this module only spawns
`.venv-argilla/bin/python -m labeling.server.launcher ...` and talks to it through files in the
data dir and HTTP:
    <data>/argilla.db          Argilla's database (the truth)   <data>/search-index.db  FTS5 index
    <data>/credentials.json    owner login + API key, 0600      <data>/server.json      running state
    <data>/home, <data>/tmp    ARGILLA_HOME_PATH and TMPDIR      <data>/logs/            process logs
Default data dir: $DISTILFORGE_ARGILLA_DIR, else $XDG_DATA_HOME/distilforge/argilla
(~/.local/share/distilforge/argilla): per user, outside the repo, survives `git clean`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional
from distilforge.errors import RuntimeFailure

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6900
ENGINE_NAME = "distilforge-sqlite"  # same as labeling.server.ENGINE_NAME, kept import-free


class ReviewServerError(RuntimeFailure, RuntimeError):
    """A one-line, user-facing reason why the embedded server could not be managed."""


def default_data_dir() -> Path:
    if os.environ.get("DISTILFORGE_ARGILLA_DIR"):
        return Path(os.environ["DISTILFORGE_ARGILLA_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "distilforge" / "argilla"


def default_venv() -> Path:
    return Path(os.environ.get("DISTILFORGE_ARGILLA_VENV") or REPO_ROOT / ".venv-argilla")


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "argilla.db"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def state(self) -> Path:
        return self.root / "server.json"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def create(self) -> None:
        for path in (self.root, self.home, self.tmp, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # holds the credentials file and every reviewed record


def server_env(paths: Paths, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for every process of the embedded server (server, worker, CLI tools)."""
    env = dict(os.environ if base is None else base)
    for key in ("ARGILLA_API_URL", "ARGILLA_API_KEY", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(key, None)
    env.update(
        ARGILLA_HOME_PATH=str(paths.home),
        ARGILLA_DATABASE_URL=f"sqlite+aiosqlite:///{paths.db}?check_same_thread=False",
        ARGILLA_SEARCH_ENGINE=ENGINE_NAME,
        HF_HUB_DISABLE_TELEMETRY="1",
        TMPDIR=str(paths.tmp),
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


def read_state(data_dir: Optional[Path] = None) -> Optional[dict]:
    paths = Paths(Path(data_dir or default_data_dir()))
    try:
        state = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None
    return state if _pid_alive(int(state.get("pid", 0))) else None


def read_credentials(data_dir: Optional[Path] = None) -> dict:
    path = Paths(Path(data_dir or default_data_dir())).credentials
    try:
        return json.loads(path.read_text())
    except OSError:
        raise ReviewServerError(f"no credentials at {path}: run `distilforge review serve` first") from None


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def status(data_dir: Optional[Path] = None) -> dict:
    """{'running': bool, 'healthy': bool, 'url', 'data_dir', 'credentials', 'pid', ...}."""
    root = Path(data_dir or default_data_dir())
    state = read_state(root) or {}
    url = state.get("url")
    return {
        "running": bool(state),
        "healthy": bool(url and state.get("ready") and _http_ok(f"{url}/api/v1/status")),
        "url": url,
        "pid": state.get("pid"),
        "data_dir": str(root),
        "credentials": str(Paths(root).credentials),
        "engine": ENGINE_NAME,
    }


def _run_launcher(python: Path, args: list, env: Dict[str, str], log: Path, timeout: float) -> str:
    with open(log, "a") as log_fh:
        proc = subprocess.run([str(python), "-m", "labeling.server.launcher", *args], env=env, cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=log_fh, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ReviewServerError(f"`launcher {args[0]}` failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def start(data_dir: Optional[Path] = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          venv: Optional[Path] = None, timeout: float = 180.0) -> dict:
    """Start redis, the Argilla server and its worker in the background; wait until healthy.

    Returns status() plus `new_credentials` (the credentials dict, only the first time they
    were generated, so the caller can print them once)."""
    paths = Paths(Path(data_dir or default_data_dir()).expanduser().resolve())
    current = status(paths.root)
    if current["running"]:
        if current["healthy"]:
            return {**current, "new_credentials": None}
        raise ReviewServerError(f"server process {current['pid']} exists but is not healthy; "
                                f"run `distilforge review stop` (logs: {paths.logs})")
    python = Path(venv or default_venv()) / "bin" / "python"
    if not python.exists():
        raise ReviewServerError(f"{python} not found: run labeling/setup_argilla.sh (make setup)")
    paths.create()
    env = server_env(paths)
    out = _run_launcher(python, ["bootstrap"], env, paths.logs / "bootstrap.log", timeout)
    created = json.loads(out.strip().splitlines()[-1]).get("created", False)
    with open(paths.logs / "server.log", "a") as log_fh:
        proc = subprocess.Popen(
            [str(python), "-m", "labeling.server.launcher", "supervise", "--host", host, "--port", str(port)],
            env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ReviewServerError(f"server exited with code {proc.returncode}; see {paths.logs / 'server.log'}")
        current = status(paths.root)
        if current["healthy"]:
            return {**current, "new_credentials": read_credentials(paths.root) if created else None}
        time.sleep(0.5)
    stop(paths.root)
    raise ReviewServerError(f"server not healthy after {timeout:.0f}s; see {paths.logs / 'server.log'}")


def stop(data_dir: Optional[Path] = None, timeout: float = 30.0) -> bool:
    """Stop the supervisor (it stops its children); False if nothing was running."""
    root = Path(data_dir or default_data_dir())
    state = read_state(root)
    if not state:
        return False
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)  # the supervisor leads its own session/process group
    return True
