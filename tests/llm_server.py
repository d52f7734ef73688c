"""A local OpenAI-compatible HTTP server for tests: real HTTP on 127.0.0.1, scripted answers.

``FakeLLM().start()`` serves ``POST /v1/chat/completions``.  Each request takes
the next scripted step (the last one repeats):

- ``answer(content, ...)``: a normal completion whose message is ``content``;
- ``status(code)``: an error answer with that HTTP status;
- ``stall(seconds, then)``: waits (longer than the client's timeout), then answers.

Every request's JSON body is kept in ``requests``; ``release()`` ends any stall at once,
so a test never waits on a sleep.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer(content: str, *, prompt_tokens: int = 12, completion_tokens: int = 7, model: str = "fake-1",
           finish_reason: str = "stop") -> dict:
    return {"kind": "answer", "content": content, "usage": (prompt_tokens, completion_tokens), "model": model,
            "finish_reason": finish_reason}


def status(code: int) -> dict:
    return {"kind": "status", "code": code}


def stall(seconds: float, then: dict) -> dict:
    return {"kind": "stall", "seconds": seconds, "then": then}


class FakeLLM:
    def __init__(self, *steps: dict) -> None:
        self.steps = list(steps)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append(body)
                    fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = fake.steps.pop(0) if len(fake.steps) > 1 else fake.steps[0]
                if step["kind"] == "stall":
                    fake._released.wait(step["seconds"])
                    step = step["then"]
                if step["kind"] == "status":
                    self._send(step["code"], {"error": {"message": "scripted failure", "type": "server_error"}})
                    return
                prompt, completion = step["usage"]
                self._send(200, {
                    "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": step["model"],
                    "choices": [{"index": 0, "finish_reason": step["finish_reason"],
                                 "message": {"role": "assistant", "content": step["content"]}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion}})

            def _send(self, code: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (a timeout): nobody is listening

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-llm", daemon=True).start()
        return self

    def release(self) -> None:
        self._released.set()

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
