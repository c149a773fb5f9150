"""The lexical half of retrieval: TF-IDF over character n-grams, and how its votes mix with the embedding's."""

import pytest
import torch
from helpers import ORGANS

from medsora.query.fusion import FusionParameters, hybrid_votes, retrieval_votes
from medsora.text.lexical import LexicalIndex
from medsora.text.retrieval import TextIndex

TEXTS = [
    "Hepatomegaly with raised ALT and AST.",
    "Splenomegaly and thrombocytopenia.",
    "Raised serum lipase and amylase.",
    "Sprained ankle after a fall.",
]


def test_word_roots_abbreviations_and_units_match_across_phrasing():
    lexical = LexicalIndex(TEXTS)
    similarities = lexical.similarities(["the liver is enlarged (hepatomegaly), ALT 400", "splenic enlargement", "xq"])
    assert similarities.shape == (3, 4) and len(lexical) == 4
    assert similarities.min() >= 0.0 and similarities.max() <= 1.0 + 1e-6
    assert similarities[:2].argmax(dim=1).tolist() == [0, 1]
    assert similarities[2].max() == 0.0  # nothing shared: no similarity at all, not a small one
    assert lexical.similarities([TEXTS[2]])[0, 2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least one text"):
        LexicalIndex([])


def index_of(organs: list[int]) -> TextIndex:
    records = [{"id": str(n), "text": f"text {n}", "provenance": {}} for n in range(len(organs))]
    return TextIndex(torch.eye(len(organs)), torch.tensor(organs), records, ORGANS, "test-encoder")


def test_the_lexical_votes_mix_in_at_their_share_and_only_where_a_query_shares_n_grams():
    index = index_of([0, 1, 2, -1])
    dense = torch.tensor([[0.9, 0.1, 0.1, 0.1], [0.9, 0.1, 0.1, 0.1]])
    lexical = torch.tensor([[0.0, 0.8, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])  # the second query shares nothing
    dense_votes, dense_inside = retrieval_votes(index, *dense.topk(2, dim=1), 0.05)
    lexical_votes, lexical_inside = retrieval_votes(index, *lexical.topk(2, dim=1), 0.05)
    alone, inside_alone = hybrid_votes(index, dense, None, 2, 0.05, 0.0)
    assert torch.equal(alone, dense_votes) and torch.equal(inside_alone, dense_inside)
    votes, inside = hybrid_votes(index, dense, lexical, 2, 0.05, 0.25)
    assert torch.allclose(votes[0], 0.75 * dense_votes[0] + 0.25 * lexical_votes[0])
    assert inside[0] == pytest.approx(float(0.75 * dense_inside[0] + 0.25 * lexical_inside[0]))
    assert torch.equal(votes[1], dense_votes[1]) and inside[1] == dense_inside[1]
    assert torch.allclose(votes.sum(dim=1), torch.ones(2))
    assert votes[0, 1] > dense_votes[0, 1]  # the second organ, found by its words, gains
    with pytest.raises(ValueError, match="lexical similarities"):
        hybrid_votes(index, dense, None, 2, 0.05, 0.5)
    with pytest.raises(ValueError, match="lexical_share must be in"):
        FusionParameters(lexical_share=1.5)
