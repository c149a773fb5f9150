# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The lexical half of retrieval: TF-IDF over character n-grams of the indexed texts.

A frozen general-domain sentence encoder places "ALT 420 U/L" or "splenomegaly" by what it learned from general text;
the corpus names the same findings in the same words. Word-internal character n-grams match what medical words share
(``hepat``, ``splen``, ``cholecyst``, ``nephr``, abbreviations and units) however the sentence around them is phrased,
and a query's nearest texts by them vote beside its nearest texts by meaning (hybrid search). The vectoriser is
fitted on the index's own texts when first needed (well under a second for a few thousand texts), so it can never
disagree with the index it searches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.feature_extraction.text import TfidfVectorizer

__all__ = ["LexicalIndex"]


class LexicalIndex:
    """Cosine similarity of TF-IDF vectors (``char_wb`` n-grams, sublinear term frequency) with indexed texts.

    Args:
        texts: the indexed texts, in index row order.
        ngram_range: lengths of the character n-grams, taken within word boundaries.
    """

    def __init__(self, texts: Sequence[str], ngram_range: tuple[int, int] = (3, 5)) -> None:
        if not texts:
            raise ValueError("a lexical index needs at least one text.")
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=ngram_range, sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform(list(texts)).T.tocsr()

    def __len__(self) -> int:
        return int(self.matrix.shape[1])

    def similarities(self, queries: Sequence[str]) -> torch.Tensor:
        """Cosine similarity ``(Q, N)`` in ``[0, 1]`` of each query with every indexed text (0: no n-gram shared)."""
        vectors = self.vectorizer.transform(list(queries))
        return torch.from_numpy((vectors @ self.matrix).toarray()).float()
