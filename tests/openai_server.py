"""A local OpenAI-compatible HTTP server for tests: real HTTP on 127.0.0.1, stops itself.

It answers `POST /v1/chat/completions` the way the hosted API does (same JSON shape, usage counts),
with a deterministic "rewrite" of the text after the last `Text:` / `Statement:` line, so that tests
can check what the teacher wrote. It records every request it served.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_LIFETIME_S = 1800


def rewrite(prompt: str) -> str:
    """What the fake teacher answers for a prompt: a polite paraphrase marker + the source text."""
    match = re.search(r"(?:Text|Statement):\s*(.*)\s*$", prompt, flags=re.S)
    source = (match.group(1) if match else prompt).strip()
    return f"Politely put: {source.lower()}"


class FakeOpenAI:
    """Start with `with FakeOpenAI() as server:`; `server.base_url` goes into the openai client."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _json(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                outer.requests.append(body)
                outer.auth_headers.append(self.headers.get("Authorization", ""))
                prompt = body["messages"][-1]["content"]
                text = rewrite(prompt)
                self._json(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": 0,
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                              "total_tokens": len(prompt.split()) + len(text.split())},
                })

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(MAX_LIFETIME_S, self.stop)  # bounded in time whatever happens
        self._timer.daemon = True

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
