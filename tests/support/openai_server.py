"""A local OpenAI-compatible HTTP server for tests: real HTTP on 127.0.0.1, stops itself.

It answers `POST /v1/chat/completions` the way the hosted API does (same JSON shape, usage counts),
with a deterministic "rewrite" of the text after the last `Text:` / `Statement:` line, so that tests
can check what the teacher wrote. It records every request it served (`requests`, `auth_headers`,
and `log`: arrival time, fault, tokens).

Faults, for the teacher's retry and check paths: with `fault_rate` > 0 a request gets one of `faults`
at random (seeded); `script` maps a substring of the prompt to the faults its successive requests get
("ok" for a normal reply), which pins an exact sequence. Kinds: "429" (with Retry-After), "500",
"slow" (answers after `slow_s`, past the client's timeout), "malformed" (invalid JSON), "refusal",
"empty", "echo" (the input back), "disconnect" (closes the connection without a reply), "401" (a bad key:
not worth a retry). "echo" and "401" are never drawn at random unless named in `faults`.
"""

from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_LIFETIME_S = 1800
FAULTS = ("429", "500", "slow", "malformed", "refusal", "empty", "disconnect")


def source_text(prompt: str) -> str:
    """The item's text inside a rendered prompt (after the last `Text:` / `Statement:`)."""
    match = re.search(r"(?:Text|Statement):\s*(.*)\s*$", prompt, flags=re.S)
    return (match.group(1) if match else prompt).strip()


def rewrite(prompt: str) -> str:
    """What the fake teacher answers for a prompt: a polite paraphrase marker + the source text."""
    return f"Politely put: {source_text(prompt).lower()}"


class FakeOpenAI:
    """Start with `with FakeOpenAI() as server:`; `server.base_url` goes into the openai client."""

    def __init__(
        self, *, latency: float = 0.0, fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS,
        script: dict[str, list[str]] | None = None, retry_after: float | None = 0.2, slow_s: float = 3.0,
        seed: int = 0,
    ) -> None:
        known = (*FAULTS, "echo", "401")
        unknown = (set(faults) | {k for q in (script or {}).values() for k in q}) - set(known) - {"ok"}
        if unknown:
            raise ValueError(f"FakeOpenAI: unknown fault kind(s) {sorted(unknown)}; known: {known}")
        self.latency, self.fault_rate, self.faults = latency, fault_rate, tuple(faults)
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.retry_after, self.slow_s = retry_after, slow_s
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.log: list[dict] = []  # {"t": monotonic arrival, "fault": kind or None, "tokens": billed}
        self.fault_counts: Counter = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the hosted API

            def log_message(self, *args):  # keep test output quiet
                pass

            def setup(self):
                super().setup()
                # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms a reply
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                self._send(status, json.dumps(payload).encode(), headers)

            def do_POST(self):
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                prompt = body["messages"][-1]["content"]
                fault = outer._fault(prompt)
                outer.requests.append(body)
                outer.auth_headers.append(self.headers.get("Authorization", ""))
                entry = {"t": arrived, "fault": fault, "tokens": 0}
                outer.log.append(entry)
                if outer.latency:
                    time.sleep(outer.latency)
                if fault == "429":
                    headers = {"Retry-After": f"{outer.retry_after:g}"} if outer.retry_after is not None else {}
                    self._json(429, {"error": {"message": "Rate limit reached", "type": "requests",
                                               "code": "rate_limit_exceeded"}}, headers)
                    return
                if fault == "401":
                    self._json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
                    return
                if fault == "500":
                    self._json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
                    return
                if fault == "disconnect":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "malformed":
                    self._send(200, b'{"id": "chatcmpl-x", "choices": [{"message": ')
                    return
                if fault == "slow":
                    time.sleep(outer.slow_s)
                text = {"refusal": "I'm sorry, but I can't help with that.", "empty": "",
                        "echo": source_text(prompt)}.get(fault, rewrite(prompt))
                prompt_tokens = sum(len(m["content"].split()) for m in body["messages"])
                entry["tokens"] = prompt_tokens + len(text.split())
                self._json(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                              "total_tokens": prompt_tokens + len(text.split())},
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(MAX_LIFETIME_S, self.stop)  # bounded in time whatever happens
        self._timer.daemon = True

    def _fault(self, prompt: str) -> str | None:
        """The fault this request gets: the script's next one for a matching prompt, else at random."""
        with self._lock:
            for needle, queue in self.script.items():
                if needle in prompt and queue:
                    kind = queue.pop(0)
                    fault = None if kind == "ok" else kind
                    break
            else:
                fault = self._rng.choice(self.faults) if self._rng.random() < self.fault_rate else None
            if fault:
                self.fault_counts[fault] += 1
            return fault

    def start(self) -> FakeOpenAI:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
