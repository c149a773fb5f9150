# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Text embeddings from any OpenAI-compatible ``/embeddings`` endpoint, with batching and retries."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from medsora.text.encoders import text_list

__all__ = ["OpenAIEmbeddingEncoder"]

logger = logging.getLogger(__name__)

_OPENAI_URL = "https://api.openai.com/v1"
_MAX_BACKOFF_S = 60.0


class OpenAIEmbeddingEncoder:
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint (OpenAI, vLLM, Ollama, LM Studio, ...).

    Requests carry at most ``batch_size`` texts. Connection errors, timeouts, HTTP 429 and 5xx are retried up to
    ``max_retries`` times, waiting ``backoff_s * 2**attempt`` seconds (at most 60); any other error fails at once.

    Args:
        model: model name sent to the endpoint.
        base_url: endpoint root, e.g. ``http://localhost:8000/v1``; ``None`` for api.openai.com.
        api_key_env: environment variable holding the API key; keyless servers (``base_url`` set) need none.
        batch_size: texts per request.
        max_retries: retries of a failed request.
        backoff_s: first retry delay in seconds.
        timeout_s: timeout of one request in seconds.
        normalize: L2-normalise the embeddings.
        dimensions: requested embedding size (models that support it); ``None`` for the model's own.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        batch_size: int = 64,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 60.0,
        normalize: bool = True,
        dimensions: int | None = None,
    ) -> None:
        if batch_size < 1 or max_retries < 0 or backoff_s < 0:
            raise ValueError(
                f"need batch_size >= 1, max_retries >= 0 and backoff_s >= 0, got {batch_size}, "
                f"{max_retries} and {backoff_s}."
            )
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise RuntimeError(
                    f"environment variable {api_key_env} is not set; it must hold the API key for "
                    f"api.openai.com (or set base_url for a server that needs no key)."
                )
            key = "unused"
        self.model = model
        self.base_url = base_url
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.normalize = normalize
        self.dimensions = dimensions
        self.model_id = f"openai:{base_url or 'api.openai.com'}:{model}:{dimensions}"
        self._dim = dimensions
        self._key = key

        import openai

        self._client = openai.OpenAI(api_key=key, base_url=base_url or _OPENAI_URL, timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def dim(self) -> int:
        """Embedding size: ``dimensions`` if given, else learnt from the first answer (one request if none yet)."""
        if self._dim is None:
            self._encode_batch(["dimension probe"])
        return int(self._dim)

    def _where(self) -> str:
        return f"model {self.model!r} at {self.base_url or _OPENAI_URL}"

    def _scrub(self, message: str) -> str:
        return message.replace(self._key, "***") if self._key != "unused" else message

    def _describe(self, exc: Exception) -> str:
        status = getattr(exc, "status_code", None)
        message = getattr(exc, "message", None) or str(exc)
        return self._scrub(f"HTTP {status}: {message}" if status is not None else f"{type(exc).__name__}: {message}")

    def _request(self, batch: list[str]) -> Any:
        """One ``/embeddings`` request with the retry policy; errors name the model and endpoint, never the key."""
        import openai

        extra = {} if self.dimensions is None else {"dimensions": self.dimensions}
        for attempt in range(self.max_retries + 1):
            try:
                return self._client.embeddings.create(model=self.model, input=batch, **extra)
            except openai.APIError as exc:
                retryable = isinstance(exc, (openai.APIConnectionError, openai.RateLimitError)) or (
                    isinstance(exc, openai.APIStatusError) and exc.status_code >= 500
                )
                if not retryable:
                    raise RuntimeError(f"embedding request for {self._where()} failed: {self._describe(exc)}") from None
                if attempt == self.max_retries:
                    raise RuntimeError(
                        f"embedding request for {self._where()} failed after {attempt + 1} attempts: "
                        f"{self._describe(exc)}"
                    ) from None
                delay = min(self.backoff_s * 2**attempt, _MAX_BACKOFF_S)
                logger.warning(
                    "embedding request for %s failed (%s); retry %d of %d in %.2f s",
                    self._where(),
                    self._describe(exc),
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
            except ValueError as exc:
                raise RuntimeError(f"invalid embedding answer for {self._where()}: {self._scrub(str(exc))}") from None

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        data = self._request(batch).data
        indices = sorted(item.index for item in data if isinstance(item.index, int))
        if len(data) != len(batch) or indices != list(range(len(batch))):
            raise RuntimeError(
                f"{self._where()} answered {len(data)} embeddings with indices "
                f"{[item.index for item in data][:10]} for {len(batch)} texts."
            )
        rows = [np.asarray(item.embedding, dtype=np.float32) for item in sorted(data, key=lambda item: item.index)]
        sizes = {row.shape for row in rows}
        expected = self._dim or rows[0].size
        if sizes != {(expected,)} or expected == 0:
            raise RuntimeError(
                f"{self._where()} answered embeddings of shapes {sorted(sizes)}, expected ({expected},)."
            )
        vectors = np.stack(rows)
        if not np.isfinite(vectors).all():
            raise RuntimeError(f"{self._where()} answered non-finite embedding values.")
        self._dim = expected
        if self.normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            float32 ``(N, dim)``, rows in input order, unit length when ``normalize``.
        """
        texts = text_list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [
            self._encode_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(batches).astype(np.float32, copy=False)
