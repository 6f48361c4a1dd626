"""The embedded teacher: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

One process per model, one thread (`--n_threads 1`: two threads collapse under load on a
2-core box), the GGUF's own chat template. A state file per model in the cache dir records
pid/port so `teacher status|stop` and later runs find a server that is already up; `run`
reuses a running server and only stops one it started itself.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from distilforge.assets import cache_dir, gguf_path


class TeacherError(RuntimeError):
    pass


@dataclass
class Endpoint:
    """What a client needs to talk to a teacher. The key itself is never stored or logged."""

    base_url: str
    model: str
    api_key: str
    kind: str  # "embedded" | "openai"

    def public(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "kind": self.kind}


def _state_path(model: str) -> Path:
    d = cache_dir() / "teacher"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{model}.json"


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
    """Running embedded teachers (stale state files are removed)."""
    d = cache_dir() / "teacher"
    paths = [_state_path(model)] if model else sorted(d.glob("*.json")) if d.exists() else []
    out = []
    for p in paths:
        if not p.exists():
            continue
        st = json.loads(p.read_text())
        if _alive(st["pid"]):
            st["healthy"] = healthy(st["base_url"])
            out.append(st)
        else:
            p.unlink(missing_ok=True)
    return out


def serve(model: str, *, port: int | None = None, log_path: str | Path | None = None, n_ctx: int = 4096,
          wait_s: float = 180) -> dict:
    """Start (or find) the embedded server for `model`; returns its state dict."""
    running = status(model)
    if running and running[0]["healthy"]:
        return {**running[0], "reused": True}
    gguf = gguf_path(model)
    port = port or _free_port()
    log_path = Path(log_path or cache_dir() / "teacher" / f"{model}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", model,
           "--n_threads", "1", "--n_threads_batch", "1", "--n_ctx", str(n_ctx),
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    st = {"model": model, "pid": proc.pid, "port": port, "base_url": f"http://127.0.0.1:{port}/v1",
          "gguf": str(gguf), "log": str(log_path), "started": time.time()}
    _state_path(model).write_text(json.dumps(st))
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            _state_path(model).unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace")[-800:]
            raise TeacherError(f"teacher server for {model} exited with code {proc.returncode}; log {log_path}:\n{tail}")
        if healthy(st["base_url"]):
            return {**st, "healthy": True, "reused": False}
        time.sleep(0.5)
    stop(model)
    raise TeacherError(f"teacher server for {model} not healthy after {wait_s:.0f}s; log {log_path}")


def stop(model: str) -> bool:
    p = _state_path(model)
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
        key = ""
        if teacher_cfg.api_key_env:
            key = os.environ.get(teacher_cfg.api_key_env, "")
            if not key:
                raise TeacherError(f"teacher.api_key_env: environment variable {teacher_cfg.api_key_env} is empty")
        yield Endpoint(teacher_cfg.base_url.rstrip("/"), teacher_cfg.model, key or "none", "openai")
        return
    log = Path(log_dir) / "teacher.log" if log_dir else None
    st = serve(teacher_cfg.model, log_path=log)
    try:
        yield Endpoint(st["base_url"], teacher_cfg.model, "embedded", "embedded")
    finally:
        if not st.get("reused"):
            stop(teacher_cfg.model)
