"""Loopback HTTP servers speaking E-utilities, the MediaWiki API and OpenAI chat completions.

Each server replays a script of responses (status, body, delay) and records the requests it got,
so tests can assert on retries, caching and what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, str, str, float]  # status, content type, body, delay in seconds


class Loopback:
    """A threaded HTTP server on 127.0.0.1 whose replies come from `respond(method, path, query, body)`."""

    def __init__(self, respond: Callable[[str, str, dict[str, list[str]], bytes], Reply]) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(parts.query)
                if body and self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
                    query.update(parse_qs(body.decode()))
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": parts.path,
                        "query": query,
                        "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
                status, ctype, text, delay = respond(self.command, parts.path, query, body)
                if delay:
                    time.sleep(delay)
                data = text.encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Loopback:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_completion(content: str, model: str = "local-model") -> str:
    """An OpenAI chat.completion response body whose message content is `content`."""
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }
    )


def openai_error(status: int, message: str) -> str:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"message": message, "type": "server_error", "code": status}})
