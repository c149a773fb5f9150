# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""An index of the corpus's training texts for retrieval at query time: their frozen embeddings, organs and sources.

A query's nearest training texts say which organs it points to and why (their provenance is the answer's evidence).
The index holds the texts the text stages train on (the corpus's ``train`` split, validation groups held out, so the
fusion can be chosen on texts it does not hold) and the out-of-domain training texts (organ ``None``), whose
neighbourhood says a query is not abdominal. Search is an exact cosine product in torch: a few thousand texts are one
matrix product per batch of queries; an approximate index (faiss, hnswlib) pays only past about 100k texts. Beside the
embeddings, the same texts are searched by their words (:mod:`medsora.text.lexical`).

The embeddings are only valid for the encoder that made them, so the index stores the encoder's ``model_id`` and
refuses another one.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch
from torch.nn import functional as F

from medsora.atomic_io import atomic_write
from medsora.stages import producer, require_stage_file
from medsora.text.lexical import LexicalIndex

__all__ = ["TextIndex", "build_text_index", "load_text_index"]

FORMAT = "medsora.text_index"
VERSION = 1


class TextIndex:
    """Unit-length embeddings of corpus texts with their organ (class index, ``-1`` out of domain) and records.

    Args:
        embeddings: ``(N, dim)`` embeddings of the texts (normalised here).
        organ_index: ``(N,)`` class index of each text's organ, ``-1`` for an out-of-domain text.
        records: per text, ``{"id", "text", "provenance"}`` as in the corpus files.
        organs: organ names in class-index order.
        encoder_id: ``model_id`` of the encoder that made the embeddings.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        organ_index: torch.Tensor,
        records: Sequence[dict[str, Any]],
        organs: Sequence[str],
        encoder_id: str,
    ) -> None:
        if embeddings.ndim != 2 or len(embeddings) != len(organ_index) or len(records) != len(embeddings):
            raise ValueError(
                f"an index needs (N, dim) embeddings, N organ indices and N records; got {tuple(embeddings.shape)}, "
                f"{len(organ_index)} and {len(records)}."
            )
        if len(organ_index) and (organ_index.min() < -1 or organ_index.max() >= len(organs)):
            raise ValueError(f"organ indices must lie in [-1, {len(organs) - 1}].")
        self.embeddings = F.normalize(embeddings.float(), dim=-1)
        self.organ_index = organ_index.long()
        self.records = list(records)
        self.organs = list(organs)
        self.encoder_id = encoder_id

    def __len__(self) -> int:
        return len(self.records)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @cached_property
    def lexical(self) -> LexicalIndex:
        """The same texts searched by their character n-grams (built from the records when first used)."""
        return LexicalIndex([record["text"] for record in self.records])

    def check_encoder(self, encoder_id: str, path: str = "the text index") -> None:
        """Refuse an encoder other than the one the index was built with: their vectors are not comparable."""
        if encoder_id != self.encoder_id:
            raise ValueError(
                f"{path} was built with text encoder {self.encoder_id!r} but the configured encoder is {encoder_id!r}; "
                f"configure the same encoder or rebuild the index: `{producer('text_index.pt')}`."
            )

    def similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(Q, N)`` of query embeddings ``(Q, dim)`` with every indexed text."""
        return F.normalize(queries.float(), dim=-1) @ self.embeddings.T

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar indexed texts of each query by cosine: similarities and row ids, ``(Q, k)`` each,
        most similar first."""
        return self.similarities(queries).topk(min(k, len(self)), dim=1)

    def organ(self, row: int) -> str | None:
        """The organ of indexed text ``row``, ``None`` for an out-of-domain text."""
        index = int(self.organ_index[row])
        return None if index < 0 else self.organs[index]

    def state(self) -> dict[str, Any]:
        """What :func:`load_text_index` reads back: tensors, strings and lists only (``torch.load`` with
        ``weights_only``)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "encoder_id": self.encoder_id,
            "organs": self.organs,
            "embeddings": self.embeddings.half(),
            "organ_index": self.organ_index,
            "records": self.records,
        }

    def save(self, path: str) -> str:
        """Write the index atomically; returns ``path``."""
        atomic_write(path, lambda tmp: torch.save(self.state(), tmp), ".pt")
        return path


def _index_record(record: dict[str, Any]) -> dict[str, Any]:
    return {"id": record.get("id", ""), "text": record["text"], "provenance": dict(record.get("provenance") or {})}


def build_text_index(corpus: Any, path: str | None = None) -> TextIndex:
    """Index a :class:`~medsora.text.corpus.SymptomCorpus`'s ``train`` and ``ood_train`` texts with its encoder.

    Args:
        corpus: the corpus the text stages train on (its encoder's embeddings are cached on disk).
        path: where to save the index, if given.
    """
    inside, outside = corpus.records["train"], corpus.records["ood_train"]
    index = TextIndex(
        torch.cat([corpus.embeddings("train"), corpus.embeddings("ood_train")]),
        torch.cat([corpus.organ_indices("train"), torch.full((len(outside),), -1, dtype=torch.long)]),
        [_index_record(r) for r in [*inside, *outside]],
        corpus.organs,
        corpus.encoder.model_id,
    )
    if path:
        index.save(path)
    return index


def _unusable(path: str, why: str) -> ValueError:
    return ValueError(f"text index {path} is unusable ({why}); rebuild it: `{producer(path)}`.")


def load_text_index(path: str, encoder_id: str | None = None, organs: Sequence[str] | None = None) -> TextIndex:
    """Read an index written by :meth:`TextIndex.save` and check it against the configured encoder and organs.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names the command that builds it).
        ValueError: the file is not a readable index, or was built for another encoder or other organs.
    """
    require_stage_file(path, "text index")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise _unusable(path, f"not a readable torch file: {type(e).__name__}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise _unusable(path, f"not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise _unusable(path, f"format version {state.get('version')!r}, this library reads {VERSION}")
    try:
        index = TextIndex(
            state["embeddings"], state["organ_index"], state["records"], state["organs"], state["encoder_id"]
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _unusable(path, f"{type(e).__name__}: {e}") from e
    if organs is not None and list(organs) != index.organs:
        raise ValueError(
            f"text index {path} holds organs {index.organs}, the configuration {list(organs)}; rebuild it: "
            f"`{producer(path)}`."
        )
    if encoder_id is not None:
        index.check_encoder(encoder_id, f"text index {path}")
    return index
