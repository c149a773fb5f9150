# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""The ``query`` workflow: symptom texts in, organ scores, rankings and pictures out.

The JSONL contract (one answer per input line, same order, input keys copied through, ``scores`` / ``ranking`` /
``in_domain``) is what outside tools rely on, so a bad line never stops the others: it gets an ``error`` field
instead, and the output file appears whole or not at all.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medsora.atomic_io import write_text_atomic
from medsora.image.gate import load_image_gate
from medsora.query.inputs import parse_query_lines
from medsora.query.patient import draw_answers, patient_organ_features
from medsora.query.printout import format_ranking
from medsora.query.scorer import OrganQuery
from medsora.stages import load_weights

__all__ = ["answer_queries", "run_query"]


def answer_queries(
    query: OrganQuery, records: list[tuple[dict[str, Any], str | None]], organ_features: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Answers in input order: the input's keys plus the answer (with its evidence), or plus ``error`` for a bad
    line."""
    valid = [i for i, (_, error) in enumerate(records) if error is None]
    scored = query.score_with_evidence([records[i][0]["text"] for i in valid], organ_features)
    answers: list[dict[str, Any]] = [{**record, "error": error} for record, error in records]
    for row, i in enumerate(valid):
        answers[i] = {**records[i][0], **query.answer(*(column[row] for column in scored))}
    return answers


def _write_jsonl(records: list[dict[str, Any]], path: str) -> None:
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def run_query(
    query: OrganQuery,
    text: str | None = None,
    queries_file: str | None = None,
    output_file: str | None = None,
    image: str | None = None,
    label: str | None = None,
    maps_dir: str | None = None,
    organ_labels: Mapping[str, Sequence[int]] | None = None,
    image_network: torch.nn.Module | None = None,
    image_weights: str | None = None,
    preprocessing: Any = None,
    device: Any = "cpu",
    image_gate: str | None = None,
) -> list[dict[str, Any]]:
    """Answer ``--text`` (printed) or ``--queries_file`` (JSONL to ``output_file``), optionally on a patient's CT.

    With ``image`` and ``label`` the scores use the patient's own organ features (organs absent from the label map
    keep their reference score and are listed under ``absent_organs``), and every answered query also gets a
    probability map NIfTI (each organ's voxels carry its score, on the CT's grid and affine) and a PNG in
    ``maps_dir``, named in the answer as ``probability_map`` and ``figure``, and the 3D view (``figure_3d`` PNG,
    ``view_3d`` HTML). The image gate stored in ``image_gate``
    decides which organs use the patient's features; the answer says so under ``image_features``.
    """
    if (text is None) == (queries_file is None):
        raise ValueError('give exactly one of --text "..." or --queries_file FILE.jsonl.')
    if queries_file is not None:
        if not output_file:
            raise ValueError("--queries_file needs --output_file for the answers (JSONL).")
        if not os.path.isfile(queries_file):
            raise FileNotFoundError(f"queries file {queries_file} not found.")
        with open(queries_file, "rb") as f:
            records = parse_query_lines(f.read())
    else:
        # an unpaired surrogate (from undecodable command-line bytes) stays a JSON escape, to get the line's error
        line = json.dumps({"text": text}, ensure_ascii=False).encode("utf-8", "backslashreplace")
        records = parse_query_lines(line)
    patient = None
    if image is not None or label is not None:
        if None in (image_network, image_weights, preprocessing, organ_labels, image_gate):
            raise ValueError(
                "querying on a CT needs the image network, its weights, preprocessing, organ_labels and image gate."
            )
        load_weights(image_network, image_weights)
        gate = load_image_gate(str(image_gate))
        patient = patient_organ_features(query, image_network, preprocessing, str(image), str(label), gate, device)
    answers = answer_queries(query, records, None if patient is None else patient.features)
    if patient is not None:
        draw_answers(
            answers,
            str(image),
            str(label),
            organ_labels,
            maps_dir or os.path.dirname(os.path.abspath(output_file or ".")),
            patient,
        )
    if queries_file is not None:
        _write_jsonl(answers, str(output_file))
        answered = sum("error" not in a for a in answers)
        print(f"answered {answered} of {len(answers)} queries -> {output_file}")
    else:
        answer = answers[0]
        if "error" in answer:
            raise ValueError(f"--text: {answer['error']}")
        print(format_ranking(str(text), answer, query.threshold))
        for key in ("probability_map", "figure", "figure_3d", "view_3d"):
            if key in answer:
                print(f"{key.replace('_', ' ')}: {answer[key]}")
    return answers
