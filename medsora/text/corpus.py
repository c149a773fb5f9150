# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The symptom corpus as the text stages see it: checked records, a grouped validation split and embeddings.

Texts are encoded once by the frozen encoder (through its on-disk cache), so every text stage trains on tensors.
The validation split is held out by source group, like the corpus's own train/test split, so that calibration
and model choice never see a paraphrase of what they are judged on.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import torch

__all__ = [
    "default_corpus_dir",
    "read_corpus",
    "grouped_holdout",
    "SymptomCorpus",
]


def default_corpus_dir() -> str:
    """The corpus shipped as data of the ``dataset_builder`` package (``train.jsonl``, ``test.jsonl``, OOD files).

    The package is located, not imported: the library reads the builder's output and never runs the builder.
    """
    spec = importlib.util.find_spec("dataset_builder")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the default symptom corpus ships with the dataset_builder package: `pip install -e .` from the "
            "repository, or pass --corpus_dir DIR holding train.jsonl, test.jsonl, ood_train.jsonl, ood_test.jsonl."
        )
    return os.path.join(os.path.dirname(spec.origin), "corpus")


def read_corpus(path: str, organs: Sequence[str], kind: str) -> list[dict[str, Any]]:
    """Read and check one corpus file.

    Args:
        path: JSONL file, one record per line.
        organs: the known organ names.
        kind: ``"train"`` (each record has ``text`` and ``organ``), ``"test"`` (``text`` and a non-empty ``labels``
            list, primary organ first), ``"ood"`` (``text``; non-abdominal, so no organ labels) or ``"queries"``
            (``text`` and ``labels``, empty for a non-abdominal text).

    Returns:
        the records, each with ``labels`` (list of organ names; ``[organ]`` for training records).
    """
    if kind not in ("train", "test", "ood", "queries"):
        raise ValueError(f"kind must be 'train', 'test', 'ood' or 'queries', got {kind!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"symptom corpus file {path} not found (build it with `python -m dataset_builder build`)."
        )
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not a JSON object ({e.msg}).") from e
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{where}: expected a non-empty string field 'text'.")
            labels = [record.get("organ")] if kind == "train" else list(record.get("labels") or [])
            unknown = [organ for organ in labels if organ not in organs]
            if unknown or (kind in ("train", "test") and not labels):
                raise ValueError(f"{where}: expected organ label(s) among {list(organs)}, got {unknown or labels}.")
            if kind == "ood" and labels:
                raise ValueError(f"{where}: an out-of-domain text must have no organ labels, got {labels}.")
            records.append({**record, "labels": labels})
    if not records:
        raise ValueError(f"symptom corpus file {path} holds no records.")
    return records


def grouped_holdout(records: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split records into (kept, held out), whole source groups at a time, stably from ``seed``.

    A record's group is its ``group`` field (its text when it has none); a group is held out when the hash of
    ``seed:group`` falls below ``fraction``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}.")

    def held_out(record: dict[str, Any]) -> bool:
        digest = hashlib.sha256(f"{seed}:{record.get('group') or record['text']}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < fraction

    kept = [r for r in records if not held_out(r)]
    return kept, [r for r in records if held_out(r)]


class SymptomCorpus:
    """Train / validation / test texts and their frozen embeddings, computed on first use.

    Args:
        corpus_dir: directory with the training files, ``test.jsonl`` and ``ood_test.jsonl``.
        organs: organ names in class-index order.
        encoder: frozen text encoder with ``encode(texts) -> (N, dim)`` (cached, see ``text_encoders``).
        validation_fraction: share of training groups (in-domain and out-of-domain) held out for validation.
        seed: seed of the grouped hold-out.
        train_files: the in-domain training files of ``corpus_dir`` (records with ``text`` and ``organ``).
        ood_train_files: the out-of-domain training files of ``corpus_dir`` (records with ``text``, no organ).
    """

    def __init__(
        self,
        corpus_dir: str,
        organs: Sequence[str],
        encoder: Any,
        validation_fraction: float = 0.15,
        seed: int = 0,
        train_files: Sequence[str] = ("train.jsonl", "clinical_train.jsonl"),
        ood_train_files: Sequence[str] = ("ood_train.jsonl", "clinical_ood_train.jsonl"),
    ) -> None:
        self.corpus_dir = corpus_dir
        self.train_files, self.ood_train_files = list(train_files), list(ood_train_files)
        self.organs = list(organs)
        self.encoder = encoder
        self.validation_fraction = validation_fraction
        self.seed = seed
        self._embeddings: dict[str, torch.Tensor] = {}

    def _read(self, name: str, kind: str) -> list[dict[str, Any]]:
        return read_corpus(os.path.join(self.corpus_dir, name), self.organs, kind)

    @cached_property
    def _train_split(self) -> tuple[list[dict], list[dict]]:
        records = [r for name in self.train_files for r in self._read(name, "train")]
        return grouped_holdout(records, self.validation_fraction, self.seed)

    @cached_property
    def _ood_split(self) -> tuple[list[dict], list[dict]]:
        records = [r for name in self.ood_train_files for r in self._read(name, "ood")]
        return grouped_holdout(records, self.validation_fraction, self.seed)

    @cached_property
    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Records per split: ``train``, ``validation``, ``test``, ``ood_train``, ``ood_validation``, ``ood_test``."""
        return {
            "train": self._train_split[0],
            "validation": self._train_split[1],
            "test": self._read("test.jsonl", "test"),
            "ood_train": self._ood_split[0],
            "ood_validation": self._ood_split[1],
            "ood_test": self._read("ood_test.jsonl", "ood"),
        }

    def texts(self, split: str) -> list[str]:
        return [r["text"] for r in self.records[split]]

    def embeddings(self, split: str) -> torch.Tensor:
        """``(N, dim)`` float32 embeddings of a split's texts."""
        if split not in self._embeddings:
            self._embeddings[split] = torch.as_tensor(self.encoder.encode(self.texts(split)), dtype=torch.float32)
        return self._embeddings[split]

    def organ_indices(self, split: str) -> torch.Tensor:
        """Primary organ class index of each text of an in-domain split, ``(N,)``."""
        return torch.tensor([self.organs.index(r["labels"][0]) for r in self.records[split]], dtype=torch.long)

    def label_matrix(self, split: str) -> torch.Tensor:
        """Multi-hot organ labels of an in-domain split, ``(N, num_organs)`` float."""
        matrix = torch.zeros(len(self.records[split]), len(self.organs))
        for row, record in enumerate(self.records[split]):
            matrix[row, [self.organs.index(o) for o in record["labels"]]] = 1.0
        return matrix

    def domain_data(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of in-domain and out-of-domain texts of a split with targets 1 and 0, ``(N, dim), (N, 1)``."""
        ood_split = {"train": "ood_train", "validation": "ood_validation", "test": "ood_test"}[split]
        inside, outside = self.embeddings(split), self.embeddings(ood_split)
        targets = torch.cat([torch.ones(len(inside), 1), torch.zeros(len(outside), 1)])
        return torch.cat([inside, outside]), targets

    def domain_pos_weight(self) -> torch.Tensor:
        """``n_out / n_in`` of the training split, so that both domains weigh the same in the gate's loss."""
        return torch.tensor([len(self.records["ood_train"]) / len(self.records["train"])])
