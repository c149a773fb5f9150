"""The shipped query model (bundle/models) on the clinician-phrased queries of bundle/docs, as the docs report it."""

import os

import numpy as np
from helpers import BUNDLE_ROOT, INFERENCE
from monai.bundle import ConfigParser

from medsora.text.corpus import read_corpus


def test_shipped_model_ranks_clinician_phrased_queries_and_rejects_the_others():
    parser = ConfigParser()
    parser.read_config(INFERENCE)
    parser["bundle_root"] = BUNDLE_ROOT
    query_model = parser.get_parsed_content("query_model")
    records = read_corpus(os.path.join(BUNDLE_ROOT, "docs", "clinical_queries.jsonl"), query_model.organs, "queries")
    scores, in_domain = query_model.score([r["text"] for r in records])
    abdominal = np.array([bool(r["labels"]) for r in records])
    assert abdominal.sum() == 44 and (~abdominal).sum() == 15
    top = [query_model.organs[i] for i in scores.argmax(axis=1)]
    hits = [organ in r["labels"] for organ, r in zip(top, records) if r["labels"]]
    assert np.mean(hits) >= 0.95  # docs/README.md: 100 % with the shipped weights
    assert in_domain[abdominal].mean() >= 0.9 and not in_domain[~abdominal].any()
    assert scores[~abdominal].max(axis=1).mean() < scores[abdominal].max(axis=1).mean()
