"""Connect the `argilla` SDK (main venv) to the embedded server or to a hosted Argilla.

Resolution order for the URL and API key, so one code path serves both setups:
1. explicit arguments;
2. environment `ARGILLA_API_URL` + `ARGILLA_API_KEY` (a hosted Argilla; both required);
3. the embedded server's files in the data dir: `credentials.json` (the owner's API key, plus an
   optional `api_url` for a hosted server written there by hand) and `server.json` (its URL).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple

from labeling.server import control
from distilforge.errors import RuntimeFailure

ENV_URL = "ARGILLA_API_URL"
ENV_KEY = "ARGILLA_API_KEY"


class ArgillaConnectionError(RuntimeFailure, RuntimeError):
    """One-line reason why no Argilla URL/API key could be resolved."""


def resolve_connection(api_url: Optional[str] = None, api_key: Optional[str] = None,
                       data_dir: Optional[Path] = None) -> Tuple[str, str]:
    """Return (api_url, api_key) following the module's resolution order."""
    if api_url and api_key:
        return api_url.rstrip("/"), api_key
    env_url, env_key = os.environ.get(ENV_URL), os.environ.get(ENV_KEY)
    if env_url or env_key:
        if not (env_url and env_key):
            raise ArgillaConnectionError(f"set both {ENV_URL} and {ENV_KEY} (only one is set)")
        if api_url and api_url.rstrip("/") != env_url.rstrip("/") and not api_key:
            raise ArgillaConnectionError(f"no API key for {api_url} (pass --api-key; {ENV_KEY} belongs to {env_url})")
        return (api_url or env_url).rstrip("/"), api_key or env_key
    try:
        creds = control.read_credentials(data_dir)
    except control.ReviewServerError as exc:
        raise ArgillaConnectionError(f"{exc}, or set {ENV_URL} and {ENV_KEY} for a hosted Argilla") from None
    if api_url and not api_key and api_url.rstrip("/") != str(creds.get("api_url") or "").rstrip("/"):
        state = control.read_state(data_dir) or {}
        if api_url.rstrip("/") != str(state.get("url") or "").rstrip("/"):
            # never send the embedded owner's key to some other server
            raise ArgillaConnectionError(f"no API key for {api_url} (pass --api-key or set {ENV_KEY})")
    url = api_url or creds.get("api_url")
    if not url:
        state = control.read_state(data_dir)
        if not state:
            raise ArgillaConnectionError("the embedded Argilla server is not running: "
                                         "run `distilforge review serve`")
        url = state["url"]
    return url.rstrip("/"), api_key or creds["api_key"]


def connect(api_url: Optional[str] = None, api_key: Optional[str] = None,
            data_dir: Optional[Path] = None, timeout: int = 60):
    """An `argilla.Argilla` client for the resolved server."""
    import argilla as rg

    url, key = resolve_connection(api_url, api_key, data_dir)
    from distilforge.secrets import register

    register(key)  # scrubbed from anything printed from now on (distilforge/secrets.py)
    return rg.Argilla(api_url=url, api_key=key, timeout=timeout)
