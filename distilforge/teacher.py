"""The embedded teacher: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

One thread per process (`--n_threads 1`: two threads collapse under load on a 2-core box), the
GGUF's own chat template, prompts read in fixed blocks (distilforge/llama_server.py) so that an answer
depends on the request alone, never on what the server served before. `replicas` starts several such processes of one model (they share the
weights through the page cache) and clients spread requests over them: decode speed here is
bound by one core's memory bandwidth, so two single-thread replicas on two cores give ~2x where
one two-thread server does not. A state file per replica in the cache dir records pid/port so
`teacher status|stop` and later runs find servers already up; `run` reuses running replicas and
only stops the ones it started itself.

Servers a run starts are the run's: their state file records the owner (pid + process start time
of the distilforge command, runlock.identity) and they get PDEATHSIG (SIGKILL when the command
dies, even by `kill -9`). Should one still outlive its owner (an older version started it, or the
owner's host differs), the next `run`/`generate` that serves the same model adopts it (becomes the
owner, stops it at its end) if it is healthy and needed, and stops it otherwise: no run leaves a
server behind. `teacher serve` starts servers with no owner and no PDEATHSIG: they are meant to
outlive the command, and only `teacher stop` ends them.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx

from distilforge import runlock
from distilforge.assets import cache_dir, gguf_path
from distilforge.secrets import Secret
from distilforge.errors import RuntimeFailure


class TeacherError(RuntimeFailure, RuntimeError):
    pass


@dataclass
class Endpoint:
    """What a client needs to talk to a teacher. The key itself is never stored or logged.

    `base_urls` lists every server of the same model (embedded replicas or a remote fleet);
    requests are spread across them. `base_url` is the first.
    """

    base_url: str
    model: str
    api_key: Secret  # masked in repr/str; `.reveal()` only where a client is built
    kind: str  # "embedded" | "openai"
    base_urls: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.base_urls = list(self.base_urls) or [self.base_url]

    def public(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "kind": self.kind,
                **({"base_urls": self.base_urls} if len(self.base_urls) > 1 else {})}


def _key(model: str) -> str:
    return Path(model).name  # a .gguf path is keyed by its file name


def _state_path(model: str, replica: int = 0) -> Path:
    d = cache_dir() / "teacher"
    d.mkdir(parents=True, exist_ok=True)
    return d / (f"{_key(model)}.json" if replica == 0 else f"{_key(model)}@{replica}.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def healthy(base_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{base_url}/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def status(model: str | None = None) -> list[dict]:
    """Running embedded teachers, every replica (stale state files are removed)."""
    d = cache_dir() / "teacher"
    if not d.exists():
        return []
    paths = sorted(d.glob(f"{_key(model)}.json")) + sorted(d.glob(f"{_key(model)}@*.json")) if model else sorted(d.glob("*.json"))
    out = []
    for p in paths:
        st = json.loads(p.read_text())
        if _alive(st["pid"]):
            st["healthy"] = healthy(st["base_url"])
            out.append(st)
        else:
            p.unlink(missing_ok=True)
    return sorted(out, key=lambda s: s.get("replica", 0))


def orphan(st: dict) -> bool:
    """A server whose owning run is dead (servers from `teacher serve` have no owner: never orphans)."""
    return bool(st.get("owner")) and not runlock.is_alive(st["owner"])


def _adopt_or_stop(model: str, replicas: int) -> list[int]:
    """Servers left by dead runs: adopt the healthy ones this call can use (same model, a replica slot
    it wants), stop the rest. Returns the adopted replica numbers."""
    adopted = []
    for st in status():
        if not orphan(st):
            continue
        i = st.get("replica", 0)
        if st["model"] == model and i < replicas and (st["healthy"] or healthy(st["base_url"], 20)):
            p = _state_path(model, i)
            p.write_text(json.dumps({**{k: v for k, v in st.items() if k != "healthy"}, "owner": runlock.identity()}))
            adopted.append(i)
        else:
            stop(st["model"], replica=i)
    return adopted


def server_command(model: str, gguf: str | Path, port: int, n_ctx: int = 4096) -> list[str]:
    """One single-thread embedded server for `model` on 127.0.0.1:`port` (block-aligned prompt reuse)."""
    return [sys.executable, "-m", "distilforge.llama_server", "--model", str(gguf), "--model_alias", model,
            "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", str(n_ctx),
            "--host", "127.0.0.1", "--port", str(port)]


def serve(model: str, *, port: int | None = None, log_path: str | Path | None = None, n_ctx: int = 4096,
          wait_s: float = 180, replicas: int = 1, owned: bool = False) -> dict:
    """Start (or find) `replicas` embedded servers for `model`, one thread each.

    Returns the first replica's state plus `base_urls` (all replicas), `launched` (the replica
    numbers this call started) and `adopted` (left by a dead run, now this caller's): the caller
    stops only those. `owned`: the servers belong to this process (a run), see the module doc."""
    adopted = _adopt_or_stop(model, replicas) if owned else []
    # A busy server (one request at a time, two loaded cores) can miss health checks for a long
    # while. A live one is never replaced: a second server in its slot would overwrite its state
    # file and leave it running unseen. It is waited for like a starting one.
    live = {st.get("replica", 0): st for st in status(model)}
    running = {i: st for i, st in live.items() if st["healthy"] or healthy(st["base_url"], 5)}
    busy = {i: (None, st) for i, st in live.items() if i not in running and i < replicas}
    gguf = gguf_path(model) if any(i not in live for i in range(replicas)) else None  # (a replica
    # above `replicas`, e.g. another run's @1, does not fill slot 0)
    launched: dict[int, tuple[subprocess.Popen | None, dict]] = {}
    for i in range(replicas):
        if i in live:
            continue
        p = (port + i if port else None) or _free_port()
        log = Path(log_path or cache_dir() / "teacher" / f"{_key(model)}.log")
        log = log if i == 0 else log.with_name(f"{log.stem}@{i}{log.suffix}")
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = server_command(model, gguf, p, n_ctx)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "ab") as fh:  # a run's server dies with the run (PDEATHSIG, set before exec)
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                    preexec_fn=runlock.set_pdeathsig if owned else None)
        st = {"model": model, "replica": i, "pid": proc.pid, "port": p, "base_url": f"http://127.0.0.1:{p}/v1",
              "gguf": str(gguf), "log": str(log), "started": time.time(),
              **({"owner": runlock.identity()} if owned else {})}
        _state_path(model, i).write_text(json.dumps(st))
        launched[i] = (proc, st)
    deadline = time.time() + wait_s
    pending = {**busy, **launched}
    while pending and time.time() < deadline:
        for i, (proc, st) in list(pending.items()):
            if proc is None and not _alive(st["pid"]):
                raise TeacherError(f"teacher server for {model} (replica {i}, pid {st['pid']}) exited while "
                                   "busy; rerun to start a new one")
            if proc is not None and proc.poll() is not None:
                for j in launched:
                    stop(model, replica=j)
                tail = Path(st["log"]).read_text(errors="replace")[-800:]
                raise TeacherError(f"teacher server for {model} (replica {i}) exited with code {proc.returncode}; "
                                   f"log {st['log']}:\n{tail}")
            if healthy(st["base_url"]):
                running[i] = {**st, "healthy": True}
                del pending[i]
        if pending:
            time.sleep(0.5)
    if pending:
        for j in launched:
            stop(model, replica=j)
        raise TeacherError(f"teacher server for {model} not healthy after {wait_s:.0f}s; log {next(iter(pending.values()))[1]['log']}")
    first = running[0] if 0 in running else running[min(running)]
    urls = [running[i]["base_url"] for i in sorted(running) if i < replicas]
    return {**first, "base_urls": urls, "reused": not launched, "launched": sorted(launched),
            "adopted": [i for i in adopted if i not in launched]}


def stop(model: str, replica: int | None = None) -> bool:
    """Stop one replica, or (replica=None) every replica of `model`."""
    if replica is None:
        found = [st.get("replica", 0) for st in status(model)] or [0]
        return any([stop(model, i) for i in found])
    p = _state_path(model, replica)
    if not p.exists():
        return False
    st = json.loads(p.read_text())
    if _alive(st["pid"]):
        try:
            os.killpg(st["pid"], signal.SIGTERM)
        except OSError:
            os.kill(st["pid"], signal.SIGTERM)
        for _ in range(50):
            if not _alive(st["pid"]):
                break
            time.sleep(0.1)
        else:
            os.killpg(st["pid"], signal.SIGKILL)
    p.unlink(missing_ok=True)
    return True


@contextmanager
def teacher_endpoint(teacher_cfg, log_dir: str | Path | None = None) -> Iterator[Endpoint]:
    """Yield an Endpoint for the spec's teacher; start/stop the embedded one as needed."""
    if teacher_cfg.endpoint == "openai":
        key = Secret("none")
        if teacher_cfg.api_key_env:
            key = Secret(os.environ.get(teacher_cfg.api_key_env, ""))
            if not key:
                raise TeacherError(f"teacher.api_key_env: environment variable {teacher_cfg.api_key_env} is empty")
        urls = [u.rstrip("/") for u in [teacher_cfg.base_url, *teacher_cfg.base_urls]]
        yield Endpoint(urls[0], teacher_cfg.model, key, "openai", list(dict.fromkeys(urls)))
        return
    log = Path(log_dir) / "teacher.log" if log_dir else None
    st = serve(teacher_cfg.model, log_path=log, replicas=teacher_cfg.replicas, owned=True)
    try:
        yield Endpoint(st["base_url"], teacher_cfg.model, Secret("embedded"), "embedded", st["base_urls"])
    finally:
        for i in [*st["launched"], *st["adopted"]]:
            stop(teacher_cfg.model, replica=i)
