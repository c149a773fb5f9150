# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ``query`` workflow: symptom texts in, organ scores, rankings, probability maps and pictures out."""

from medsora.query.inputs import MAX_TEXT_CHARS, parse_query_lines
from medsora.query.patient import PatientOrgans, draw_answers, patient_organ_features
from medsora.query.scorer import OrganQuery
from medsora.query.workflow import answer_queries, run_query

__all__ = [
    "MAX_TEXT_CHARS",
    "OrganQuery",
    "PatientOrgans",
    "answer_queries",
    "draw_answers",
    "parse_query_lines",
    "patient_organ_features",
    "run_query",
]
