"""Shared embedded-Argilla server for tests/test_argilla_*.py (one server per test session).

Why a module and not conftest.py fixtures: several test modules need the same running server
(startup costs ~30 s on a 2-core box), and module-level state is shared by every importer. Each
test module wraps `shared_server()` in its own session fixture; `stop_shared_server` is idempotent.
The server runs from .venv-argilla; these helpers only use the stdlib, httpx and the SDK.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import httpx
import pytest

from labeling.server import control

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


@dataclass
class EmbeddedServer:
    data_dir: Path
    port: int
    url: str
    api_key: str
    username: str
    password: str
    new_credentials: Optional[dict]

    def restart(self) -> None:
        assert control.stop(self.data_dir)
        info = control.start(self.data_dir, port=self.port)
        assert info["healthy"] and info["new_credentials"] is None

    def http(self, api_key: Optional[str] = None, token: Optional[str] = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {"X-Argilla-Api-Key": api_key or self.api_key}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=60)


_SERVER: Optional[EmbeddedServer] = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shared_server(tmp_path_factory: pytest.TempPathFactory) -> EmbeddedServer:
    """Start (once) the embedded server in a fresh data dir; skip if .venv-argilla is missing."""
    global _SERVER
    if _SERVER is not None:
        return _SERVER
    if not (control.default_venv() / "bin" / "python").exists():
        pytest.skip(".venv-argilla missing: run labeling/setup_argilla.sh")
    data_dir = tmp_path_factory.mktemp("argilla-data")
    port = _free_port()
    info = control.start(data_dir, port=port)
    creds = control.read_credentials(data_dir)
    _SERVER = EmbeddedServer(data_dir=data_dir, port=port, url=info["url"], api_key=creds["api_key"],
                             username=creds["username"], password=creds["password"],
                             new_credentials=info["new_credentials"])
    return _SERVER


def stop_shared_server() -> None:
    global _SERVER
    if _SERVER is not None:
        control.stop(_SERVER.data_dir)
        _SERVER = None
