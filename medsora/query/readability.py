# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Can the query model read a text? A text in another language, or gibberish, is out of domain.

The domain gate learnt abdominal against other English texts, so a text it cannot read gets an arbitrary, often
confident, P(abdominal). No language model is needed to see that most of such a text's words are unknown: a word is
known when the text encoder's tokenizer has it as a whole word or the corpus's training texts use it. Words of fewer
than three letters (``de``, ``и``; Chinese, Japanese and Korean words are judged at any length) and abbreviations
(two or more capitals: ``RUQ``, ``LFTs``) are not judged.

On the shipped corpus and encoder, every English text of ``test.jsonl`` and ``ood_test.jsonl`` has at least half of
its judged words known, texts in other languages and random letters at most a third (bundle/docs/README.md), so a
text below :data:`MIN_COVERAGE` is out of domain and its scores fall like those the domain gate rejects.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["MIN_COVERAGE", "TRAINING_FILES", "QueryVocabulary", "judged_words"]

#: share of a text's judged words that must be known for the text to be read
MIN_COVERAGE = 0.4
#: the corpus files whose words are known (never the test files)
TRAINING_FILES = ("train.jsonl", "clinical_train.jsonl", "ood_train.jsonl", "clinical_ood_train.jsonl")
_WORD = re.compile(r"[^\W\d_]+")


def judged_words(text: str) -> list[str]:
    """The words of ``text`` whose spelling is judged, lower case: not an abbreviation, and three or more letters
    unless written in a script of few-letter words (Chinese, Japanese, Korean: from U+2E80)."""
    return [
        word.lower()
        for word in _WORD.findall(text)
        if sum(c.isupper() for c in word) < 2 and (len(word) >= 3 or any(ord(c) >= 0x2E80 for c in word))
    ]


class QueryVocabulary:
    """The words a query model can read: its encoder's whole words and the corpus's training texts.

    Args:
        corpus_dir: the symptom corpus the model was trained on (its :data:`TRAINING_FILES` that exist are read).
        encoder: the text encoder; its ``words()`` (the tokenizer's whole words) are known too, when it has them.
        min_coverage: the share of judged words that must be known.
    """

    def __init__(self, corpus_dir: str, encoder: Any = None, min_coverage: float = MIN_COVERAGE) -> None:
        paths = [os.path.join(corpus_dir, name) for name in TRAINING_FILES]
        if not any(os.path.isfile(path) for path in paths):
            raise FileNotFoundError(f"corpus_dir {corpus_dir} holds none of the training files {list(TRAINING_FILES)}.")
        words = set(getattr(encoder, "words", lambda: ())())
        for path in filter(os.path.isfile, paths):
            words.update(word for text in _texts(path) for word in judged_words(text))
        self.words, self.min_coverage = frozenset(words), float(min_coverage)

    def coverage(self, texts: Sequence[str]) -> np.ndarray:
        """``(Q,)`` share of each text's judged words that are known: 1 for a text of abbreviations and short words
        only, 0 for a text without letters."""
        shares = []
        for text in texts:
            words = judged_words(text)
            shares.append(np.mean([w in self.words for w in words]) if words else float(bool(_WORD.search(text))))
        return np.asarray(shares, dtype=np.float64)

    def gate(self, texts: Sequence[str], scores: np.ndarray, in_domain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(Q, K)`` and in-domain flags ``(Q,)`` of texts it cannot read, lowered like the domain gate's:
        ``in_domain`` false and every score times ``coverage / min_coverage``; readable texts are left unchanged."""
        weight = np.minimum(1.0, self.coverage(texts) / self.min_coverage)
        return (scores * weight[:, None]).astype(scores.dtype), in_domain & (weight >= 1.0)


def _texts(path: str) -> Iterable[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line).get("text") or ""
