# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""An on-disk cache of text embeddings, so retraining a text stage does not re-encode the corpus."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from medsora.atomic_io import atomic_write
from medsora.text.encoders import text_list

__all__ = ["CachedTextEncoder"]

logger = logging.getLogger(__name__)


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
        texts = text_list(texts)
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
