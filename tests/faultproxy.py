"""A real fault-injecting HTTP proxy on loopback, in front of the real teacher server.

Rules are matched in order against each incoming POST (`match`: a substring of the request body,
"" = any); a rule fires `times` times, then falls through. Transport faults never reach the
teacher; content faults forward the request and then spoil the teacher's real answer.

  transport: "429" (with Retry-After), "500", "503", "drop" (close without a response),
             "hang" (say nothing for `seconds`, then close: the client's timeout fires)
  content:   "notjson", "empty", "truncate" (cut the answer, finish_reason=length),
             "replace" (answer := `value`)

Pass-through answers are sent with chunked encoding and a space every second while the teacher
works (JSON allows leading whitespace), so the client's read timeout only fires on a real hang:
a test can use a short timeout on a loaded machine. Every request is logged (time, path, fault,
whether the Authorization header carried the expected key) — the key itself is never stored.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

TRANSPORT = {"429", "500", "503", "drop", "hang"}


class FaultProxy:
    def __init__(self, upstream: str, rules: list[dict] | None = None, expect_key: str | None = None):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT/v1
        self.rules = [dict(r, left=r.get("times", 1)) for r in (rules or [])]
        self.expect_key = expect_key
        self.log: list[dict] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                r = httpx.get(proxy.upstream + self.path.removeprefix("/v1"), timeout=30)
                self._send(r.status_code, r.content)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rule = proxy._take(body.decode(errors="replace"))
                fault = rule["fault"] if rule else None
                auth = self.headers.get("Authorization", "")
                with proxy.lock:
                    proxy.log.append({"t": time.time(), "path": self.path, "fault": fault,
                                      "key_ok": proxy.expect_key is not None and auth == f"Bearer {proxy.expect_key}"})
                if fault in ("429", "500", "503"):
                    hdrs = {"Retry-After": str(rule.get("retry_after", 1))} if fault == "429" else {}
                    err = json.dumps({"error": {"message": f"injected {fault}", "type": "injected"}}).encode()
                    return self._send(int(fault), err, hdrs)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "hang":
                    time.sleep(rule.get("seconds", 10))
                    self.close_connection = True
                    self.connection.close()
                    return
                self._forward(body, rule)

            def _send(self, code: int, data: bytes, headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _forward(self, body: bytes, rule: dict | None):
                box: dict = {}

                def call():
                    try:
                        box["r"] = httpx.post(proxy.upstream + self.path.removeprefix("/v1"), content=body,
                                              headers={"Content-Type": "application/json"}, timeout=600)
                    except httpx.HTTPError as e:  # pragma: no cover - upstream down
                        box["e"] = e

                th = threading.Thread(target=call, daemon=True)
                th.start()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                while th.is_alive():
                    th.join(1.0)
                    if th.is_alive():
                        self._chunk(b" ")
                if "e" in box:
                    data = json.dumps({"error": {"message": str(box["e"])}}).encode()
                else:
                    data = proxy._spoil(box["r"].content, rule)
                self._chunk(data)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _take(self, body: str) -> dict | None:
        with self.lock:
            for r in self.rules:
                if r["left"] > 0 and r.get("match", "") in body:
                    r["left"] -= 1
                    return r
        return None

    @staticmethod
    def _spoil(raw: bytes, rule: dict | None) -> bytes:
        if not rule:
            return raw
        obj = json.loads(raw)
        ch = obj["choices"][0]
        text = ch["message"].get("content") or ""
        f = rule["fault"]
        ch["finish_reason"] = "stop"  # a well-ended answer that is garbage (truncate sets "length")
        if f == "notjson":
            ch["message"]["content"] = "Sure! Here is a message a customer might send."
        elif f == "empty":
            ch["message"]["content"] = ""
        elif f == "truncate":
            ch["message"]["content"] = text[: max(1, len(text) // 2)]
            ch["finish_reason"] = "length"
        elif f == "replace":
            ch["message"]["content"] = rule["value"]
        return json.dumps(obj).encode()

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
