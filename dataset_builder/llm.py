"""OpenAI-compatible chat client with JSON-schema answers, retries and a content-addressed cache.

The cache key is the SHA-256 of the canonical request (model, messages, schema, sampling
parameters); the API key is never part of a request body, a cache entry, a log line or provenance.
A rerun (or a resumed run) answers every request it has seen from the cache, so it makes no
repeated call and writes the same bytes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jsonschema

from medsora.atomic_io import write_text_atomic

from .errors import StageError
from .io import dumps
from .provenance import sha256

log = logging.getLogger(__name__)


class LLMClient:
    """Structured-output chat completions for one stage, with counters for the build summary."""

    def __init__(self, lcfg: dict[str, Any], cache_dir: str, stage: str) -> None:
        import openai

        self.cfg, self.stage, self.cache_dir = lcfg, stage, cache_dir
        key = os.environ.get(lcfg["api_key_env"], "") if lcfg.get("api_key_env") else ""
        # Local servers accept any key; the client library insists on a non-empty one.
        self._client = openai.OpenAI(
            base_url=lcfg["base_url"], api_key=key or "unused", timeout=float(lcfg["timeout"]), max_retries=0
        )
        self._openai = openai
        self.stats = {"requests": 0, "cache_hits": 0, "calls": 0, "retries": 0, "invalid": 0, "skipped": 0}

    def request(self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """The canonical request body: everything that determines the answer, nothing secret."""
        return {
            "model": self.cfg["model"],
            "messages": messages,
            "temperature": self.cfg["temperature"],
            "seed": self.cfg["seed"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            },
        }

    def ask(
        self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any], record: str
    ) -> dict[str, Any] | None:
        """Answer parsed and schema-valid, or None (logged) when the model keeps answering off-schema."""
        body = self.request(messages, schema_name, schema)
        key = sha256(dumps(body))
        path = os.path.join(self.cache_dir, key[:2], key + ".json")
        self.stats["requests"] += 1
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                self.stats["cache_hits"] += 1
                return json.load(f)["answer"]
        for attempt in range(int(self.cfg["invalid_retries"]) + 1):
            content = self._complete(body, record)
            try:
                answer = json.loads(content)
                jsonschema.validate(answer, schema)
            except (json.JSONDecodeError, TypeError, jsonschema.ValidationError) as err:
                self.stats["invalid"] += 1
                log.warning(
                    "[%s] %s: answer does not match schema %s (try %d): %s",
                    self.stage,
                    record,
                    schema_name,
                    attempt + 1,
                    str(err).splitlines()[0][:200],
                )
                continue
            write_text_atomic(path, dumps({"request": body, "answer": answer}) + "\n")
            return answer
        self.stats["skipped"] += 1
        log.warning(
            "[%s] %s: skipped after %d schema-invalid answers", self.stage, record, int(self.cfg["invalid_retries"]) + 1
        )
        return None

    def _complete(self, body: dict[str, Any], record: str) -> str:
        """One completion, retried with exponential backoff on 429, 5xx, timeouts and lost connections."""
        openai = self._openai
        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
        )
        attempts = int(self.cfg["max_retries"]) + 1
        for attempt in range(attempts):
            try:
                self.stats["calls"] += 1
                response = self._client.chat.completions.create(**body)
                return response.choices[0].message.content or ""
            except openai.APIStatusError as err:
                if not isinstance(err, retryable) and err.status_code < 500:
                    raise StageError(
                        self.stage,
                        f"LLM endpoint {self.cfg['base_url']} refused the request (HTTP {err.status_code})",
                        record,
                    ) from None
                last: Exception = err
            except retryable as err:
                last = err
            except (ValueError, AttributeError, IndexError) as err:
                last = err
            if attempt + 1 < attempts:
                self.stats["retries"] += 1
                delay = float(self.cfg["backoff_base"]) * 2**attempt
                log.warning("[%s] %s: %s, retrying in %.2fs", self.stage, record, _describe(last), delay)
                time.sleep(delay)
        if isinstance(last, openai.APIConnectionError) and not isinstance(last, openai.APITimeoutError):
            cause = f"LLM endpoint {self.cfg['base_url']} is unreachable"
        else:
            cause = f"LLM endpoint {self.cfg['base_url']} failed after {attempts} tries: {_describe(last)}"
        raise StageError(self.stage, cause, record) from None


def _describe(err: Exception) -> str:
    """Short cause without request details (headers would carry the key)."""
    status = getattr(err, "status_code", None)
    return f"HTTP {status}" if status else type(err).__name__
