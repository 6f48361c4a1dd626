"""`distilforge serve RUN` / `serve status|stop`: the exported student on an OpenAI-compatible endpoint.

Two processes per served student, both on 127.0.0.1 only:
* llama.cpp servers for the student's GGUF, started by the teacher's launcher
  (`distilforge.teacher.serve`: one thread each, `--replicas N`, state files, health checks);
* a thin front (this module, stdlib `http.server`) on the public port, which serves the model
  under the task's name and does the two things llama.cpp's server cannot be told to do for
  every request: constrain the output to the task format (classification -> a GBNF grammar of
  the label enum, multi-label -> labels joined by ", ", extraction -> the JSON schema) and
  hand each request to an idle replica (llama-cpp-python serves one request at a time).

The prompt the student was trained on is applied by the GGUF's own chat template: export bakes
the task's system prompt into it (training/export.py), and the front drops client system
messages, so a client sends only the input text — and a client that sends a system prompt of its
own (e.g. `eval --endpoint`, which also talks to teachers) still gets the trained prompt.
Streaming is not offered (answers are a few tokens).

State: one JSON per task name in the cache dir (`serve/<task>.json`: front pid/port, the GGUF, the
replicas this command started), so `serve status|stop` work from any shell and `stop` ends
exactly the processes `serve` started.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from distilforge.teacher import _alive  # one liveness rule for every server we start
from distilforge.assets import cache_dir
from distilforge.errors import RuntimeFailure, UserError
from distilforge.atomic import atomic_write_json
from distilforge.layout import Run
from heldout.formats import task_format

if TYPE_CHECKING:
    from distilforge.spec import TaskSpec


class ServeError(UserError, ValueError):
    pass


class ServeFailure(RuntimeFailure, RuntimeError):
    pass


def _gbnf_literal(s: str) -> str:
    return json.dumps(s, ensure_ascii=True)  # GBNF string literals take JSON-style escapes


def output_constraint(spec: dict) -> dict:
    """Request fields that constrain the answer to the task format (llama-cpp-python server API)."""
    kind = spec.get("type", "classification")
    if kind == "classification":
        alts = " | ".join(_gbnf_literal(lab["name"]) for lab in spec.get("labels") or [])
        if spec.get("multi_label"):
            return {"grammar": f"root ::= label (\", \" label)*\nlabel ::= {alts}\n"}
        return {"grammar": f"root ::= {alts}\n"}
    if kind == "extraction":
        return {"response_format": {"type": "json_object", "schema": spec.get("output_schema") or {}}}
    return {}


def _states():
    """(state file, state) for each served student; unreadable files are skipped."""
    for p in sorted(_state_dir().glob("*.json")):
        try:
            yield p, json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue


def _state_dir() -> Path:
    d = cache_dir() / "serve"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{url}/models", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- the front (runs in its own process)

def make_handler(cfg: dict):
    """A request handler bound to one served student (`cfg` from the state file)."""
    ups: queue.Queue = queue.Queue()
    for u in cfg["upstreams"]:
        ups.put(u)
    constraint = output_constraint(cfg["spec"])
    name, max_tokens = cfg["name"], int(cfg.get("max_tokens", 256))
    client = httpx.Client(timeout=cfg.get("timeout_s", 300))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request in the front log, no bodies
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.address_string()} {fmt % args}\n")

        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error" if code < 500 else "server_error"}})

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "distilforge",
                                                             "meta": {k: cfg.get(k) for k in
                                                                      ("quant", "replicas", "threads_per_replica",
                                                                       "adapter_sha256", "gguf_sha256")}}]})
            elif self.path.rstrip("/") == "/health":
                self._send(200, {"status": "ok", "model": name})
            else:
                self._error(404, f"no route {self.path} (POST /v1/chat/completions, GET /v1/models)")

        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                return self._error(404, f"no route {self.path} (POST /v1/chat/completions)")
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            except (ValueError, json.JSONDecodeError):
                return self._error(400, "request body is not JSON")
            msgs = body.get("messages") if isinstance(body, dict) else None
            if not isinstance(msgs, list) or not msgs:
                return self._error(400, "messages: a non-empty list is required")
            if body.get("stream"):
                return self._error(400, "stream: not supported by this endpoint (answers are a few tokens)")
            # the trained prompt comes from the GGUF's chat template: client system messages are dropped
            kept = [{"role": m.get("role"), "content": m.get("content")} for m in msgs
                    if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
            if not any(m["role"] == "user" and isinstance(m["content"], str) for m in kept):
                return self._error(400, "messages: at least one user message with text content is required")
            up_body = {"messages": kept, "temperature": body.get("temperature", 0),
                       "max_tokens": min(int(body.get("max_tokens") or max_tokens), max_tokens),
                       "seed": body.get("seed", 0), **constraint}
            url = ups.get()  # an idle replica (blocks while all are busy)
            try:
                r = client.post(f"{url}/chat/completions", json=up_body)
            except httpx.HTTPError as e:
                return self._error(502, f"student server unreachable: {type(e).__name__}")
            finally:
                ups.put(url)
            if r.status_code != 200:
                return self._error(502, f"student server answered HTTP {r.status_code}")
            out = r.json()
            out["model"] = name
            self._send(200, out)

    return Handler


def run_front(state_path: Path) -> None:
    """Entry point of the front process: serve until SIGTERM."""
    cfg = json.loads(state_path.read_text())
    srv = ThreadingHTTPServer(("127.0.0.1", cfg["port"]), make_handler(cfg))
    srv.daemon_threads = True
    def _exit(*_):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()


# ---------------------------------------------------------------- serve / status / stop

def _state_path(name: str) -> Path:
    return _state_dir() / f"{name}.json"


def status() -> list[dict]:
    """Served students (stale state files, whose front is gone, are cleaned up with their servers)."""
    out = []
    for p, st in _states():
        if _alive(st.get("pid", -1)):
            st["healthy"] = _healthy(st["base_url"])
            out.append(st)
        else:
            _stop_servers(st)
            p.unlink(missing_ok=True)
    return out


def _stop_servers(st: dict) -> None:
    from distilforge.teacher import stop as stop_llama

    for i in st.get("launched") or []:
        stop_llama(st["gguf"], replica=i)


def serve(run: Path, spec: TaskSpec, *, quant: str = "q8_0", port: int | None = None, replicas: int = 1,
          wait_s: float = 180) -> dict:
    """Start (or find) the student's llama.cpp replicas and the front; returns the state."""
    from distilforge.teacher import TeacherError
    from distilforge.teacher import serve as serve_llama
    from training.export import find_gguf

    if replicas < 1:
        raise ServeError(f"--replicas: must be >= 1, got {replicas}")
    gguf, info = find_gguf(run, quant)
    name = spec.name
    for st in status():
        if st["name"] == name:
            if st["gguf"] == str(gguf.resolve()) and st["replicas"] == replicas:
                return {**st, "reused": True}
            raise ServeError(f"{name} is already served from {Path(st['gguf']).name} with {st['replicas']} "
                             f"replica(s) on {st['base_url']}; `distilforge serve stop {name}` first")
    log_dir = Run(run).serve
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        ll = serve_llama(str(gguf.resolve()), log_path=log_dir / "llama.log", replicas=replicas, wait_s=wait_s)
    except TeacherError as e:
        raise ServeFailure(f"student server for {gguf.name} did not start: {str(e).splitlines()[0]}") from None
    p = port or _free_port()
    st = {"name": name, "run": str(run.resolve()), "quant": quant, "gguf": str(gguf.resolve()),
          "gguf_sha256": info.get("sha256"), "adapter_sha256": info.get("adapter_sha256"),
          "replicas": replicas, "threads_per_replica": 1, "upstreams": ll["base_urls"], "launched": ll["launched"],
          "port": p, "base_url": f"http://127.0.0.1:{p}/v1", "spec": spec.model_dump(mode="json", exclude={"profiles"}),
          "max_tokens": task_format(spec).max_tokens(), "front_log": str(log_dir / "front.log"),
          "started": time.time()}
    path = _state_path(name)
    atomic_write_json(path, st)
    with open(log_dir / "front.log", "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "training.serve", "--front", str(path)], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(Path(__file__).resolve().parents[1]), env={**os.environ, "OMP_NUM_THREADS": "1"})
    st["pid"] = proc.pid
    atomic_write_json(path, st)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            stop(name)
            tail = (log_dir / "front.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ServeFailure(f"serve front for {name} exited with code {proc.returncode}: {tail[0]}")
        if _healthy(st["base_url"]):
            return {**st, "healthy": True, "reused": False}
        time.sleep(0.2)
    stop(name)
    raise ServeFailure(f"serve front for {name} not healthy after 30 s; log {log_dir / 'front.log'}")


def stop(name: str | None = None) -> list[str]:
    """Stop one served student (by task name) or all; returns the names stopped."""
    stopped = []
    for p, st in _states():
        if name is not None and st.get("name") != name:
            continue
        pid = st.get("pid")
        if pid and _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except OSError:
                os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
        _stop_servers(st)
        p.unlink(missing_ok=True)
        stopped.append(st.get("name"))
    return stopped


if __name__ == "__main__":  # python -m training.serve --front STATE.json (started by `serve`)
    ap = argparse.ArgumentParser()
    ap.add_argument("--front", type=Path, required=True)
    run_front(ap.parse_args().front)
