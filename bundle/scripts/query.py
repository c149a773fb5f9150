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
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .alignment import TextImageAligner, load_weights, organ_feature_bank
from .atomic_io import write_text_atomic
from .datalist import case_datalist
from .retrieval_metrics import rank_organs

__all__ = ["MAX_TEXT_CHARS", "OrganQuery", "parse_query_lines", "answer_queries", "patient_organ_features", "run_query"]

MAX_TEXT_CHARS = 10_000


class OrganQuery:
    """Score symptom texts against the seven organs with a trained :class:`TextImageAligner`.

    Args:
        encoder: the frozen text encoder the aligner was trained with (``encode(texts) -> (N, dim)``).
        aligner: trained aligner (see ``alignment.load_weights``).
        organs: organ names in class-index order.
        batch_size: texts encoded per call.
    """

    def __init__(self, encoder: Any, aligner: TextImageAligner, organs: Sequence[str], batch_size: int = 128) -> None:
        if aligner.encoder_id and aligner.encoder_id != encoder.model_id:
            raise ValueError(
                f"the query model was trained with text encoder {aligner.encoder_id!r} but the configured encoder is "
                f"{encoder.model_id!r}; configure the same encoder or retrain the text stages with this one."
            )
        self.encoder, self.aligner, self.organs = encoder, aligner.eval(), list(organs)
        self.batch_size = batch_size

    @property
    def threshold(self) -> float:
        return float(self.aligner.threshold)

    def score(self, texts: Sequence[str], organ_features: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Organ scores ``(Q, K)`` in ``[0, 1]`` and the in-domain flags ``(Q,)``; ``organ_features`` ``(K, D, d)``
        replace the reference organs."""
        scores, flags = [np.zeros((0, len(self.organs)), dtype=np.float32)], [np.zeros(0, dtype=bool)]
        for start in range(0, len(texts), self.batch_size):
            embeddings = torch.as_tensor(self.encoder.encode(list(texts[start : start + self.batch_size]))).float()
            scores.append(self.aligner.organ_scores(embeddings, organ_features).numpy())
            flags.append(self.aligner.in_domain(embeddings).numpy())
        return np.concatenate(scores), np.concatenate(flags)

    def answer(self, scores: np.ndarray, in_domain: bool) -> dict[str, Any]:
        """The JSON answer for one query: ``scores``, ``ranking`` and ``in_domain``."""
        return {
            "scores": {organ: round(float(s), 6) for organ, s in zip(self.organs, scores)},
            "ranking": rank_organs(scores, self.organs),
            "in_domain": bool(in_domain),
        }


def parse_query_lines(data: bytes) -> list[tuple[dict[str, Any], str | None]]:
    """Split a JSONL file's bytes into ``(record, error)`` per line; ``error`` is ``None`` for a usable query."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    parsed = []
    for raw in lines:
        raw = raw.rstrip(b"\r")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            parsed.append(({}, f"line is not valid UTF-8 (byte {e.start})"))
            continue
        if len(line) > MAX_TEXT_CHARS:
            parsed.append(({}, f"line is {len(line)} characters long; at most {MAX_TEXT_CHARS} are accepted"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            parsed.append(({}, f"line is not JSON ({e.msg})"))
            continue
        if not isinstance(record, dict):
            parsed.append(({}, f"line is JSON {type(record).__name__}, expected an object with a 'text' field"))
        elif "text" not in record:
            parsed.append((record, "no 'text' field"))
        elif not isinstance(record["text"], str):
            parsed.append((record, f"'text' must be a string, got {type(record['text']).__name__}"))
        elif not record["text"].strip():
            parsed.append((record, "'text' is empty"))
        else:
            parsed.append((record, None))
    return parsed


def answer_queries(
    query: OrganQuery, records: list[tuple[dict[str, Any], str | None]], organ_features: torch.Tensor | None = None
) -> list[dict[str, Any]]:
    """Answers in input order: the input's keys plus the answer, or plus ``error`` for a bad line."""
    valid = [i for i, (_, error) in enumerate(records) if error is None]
    scores, in_domain = query.score([records[i][0]["text"] for i in valid], organ_features)
    answers: list[dict[str, Any]] = [{**record, "error": error} for record, error in records]
    for row, i in enumerate(valid):
        answers[i] = {**records[i][0], **query.answer(scores[row], in_domain[row])}
    return answers


def _write_jsonl(records: list[dict[str, Any]], path: str) -> None:
    write_text_atomic("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), path)


def format_ranking(text: str, answer: Mapping[str, Any], threshold: float) -> str:
    """A terminal-friendly ranking of one answer."""
    shown = textwrap.shorten(text, width=100, placeholder=" ...")
    verdict = "yes" if answer["in_domain"] else "no: no abdominal organ is indicated"
    lines = [f"symptoms: {shown}", f"abdominal: {verdict} (P(abdominal) threshold {threshold:.3f})"]
    for rank, organ in enumerate(answer["ranking"], 1):
        score = answer["scores"][organ]
        lines.append(f"{rank:>3}. {organ:<14} {score:.3f} {'#' * round(score * 30)}")
    return "\n".join(lines)


def patient_organ_features(query: OrganQuery, image_network: torch.nn.Module, preprocessing: Any, image: str,
                           label: str, device: Any = "cpu") -> tuple[torch.Tensor, list[str]]:
    """The organ features ``(K, D, d)`` to score against on one patient's CT, and the organs its label map lacks.

    An organ the label map holds gets the patient's own features; an absent one keeps the reference features, so
    every organ still has a score (and the answer lists it under ``absent_organs``).
    """
    features, present = organ_feature_bank(image_network, case_datalist(image, label), preprocessing,
                                           len(query.organs), device)  # fmt: skip
    features, present = features[0], present[0]
    organ_features = torch.where(present[:, None, None], features, query.aligner.reference.cpu())
    return organ_features, [organ for organ, here in zip(query.organs, present.tolist()) if not here]


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
) -> list[dict[str, Any]]:
    """Answer ``--text`` (printed) or ``--queries_file`` (JSONL to ``output_file``), optionally on a patient's CT.

    With ``image`` and ``label`` the scores use the patient's own organ features (organs absent from the label map
    keep their reference score and are listed under ``absent_organs``), and every answered query also gets a
    probability map NIfTI (each organ's voxels carry its score, on the CT's grid and affine) and a PNG in
    ``maps_dir``, named in the answer as ``probability_map`` and ``figure``.
    """
    if (text is None) == (queries_file is None):
        raise ValueError("give exactly one of --text \"...\" or --queries_file FILE.jsonl.")
    if queries_file is not None:
        if not output_file:
            raise ValueError("--queries_file needs --output_file for the answers (JSONL).")
        if not os.path.isfile(queries_file):
            raise FileNotFoundError(f"queries file {queries_file} not found.")
        with open(queries_file, "rb") as f:
            records = parse_query_lines(f.read())
    else:
        records = parse_query_lines(json.dumps({"text": text}, ensure_ascii=False).encode("utf-8"))
    organ_features, absent = None, []
    if image is not None or label is not None:
        if image_network is None or image_weights is None or preprocessing is None or organ_labels is None:
            raise ValueError("querying on a CT needs the image network, its weights, preprocessing and organ_labels.")
        load_weights(image_network, image_weights,
                     "python -m monai.bundle run training --config_file bundle/configs/train.yaml")  # fmt: skip
        organ_features, absent = patient_organ_features(query, image_network, preprocessing, str(image), str(label),
                                                        device)  # fmt: skip
    answers = answer_queries(query, records, organ_features)
    if organ_features is not None:
        _draw(answers, str(image), str(label), organ_labels, maps_dir or os.path.dirname(os.path.abspath(output_file or ".")),
              absent)
    if queries_file is not None:
        _write_jsonl(answers, str(output_file))
        answered = sum("error" not in a for a in answers)
        print(f"answered {answered} of {len(answers)} queries -> {output_file}")
    else:
        answer = answers[0]
        if "error" in answer:
            raise ValueError(f"--text: {answer['error']}")
        print(format_ranking(str(text), answer, query.threshold))
        for key in ("probability_map", "figure"):
            if key in answer:
                print(f"{key.replace('_', ' ')}: {answer[key]}")
    return answers


def _draw(answers: list[dict[str, Any]], image: str, label: str, organ_labels: Mapping[str, Sequence[int]],
          maps_dir: str, absent: list[str]) -> None:
    """Write the probability map and the picture of every answered query; note them in the answers."""
    from monai.transforms import LoadImage

    from .organ_display import organ_probability_map, render_query_figure, save_probability_map

    loader = LoadImage(image_only=True)
    ct, labels = loader(image), loader(label)
    affine = np.asarray(ct.affine, dtype=np.float64)
    ct_array, label_array = np.asarray(ct), np.asarray(labels)
    stem = os.path.basename(image).split(".")[0] or "ct"
    for index, answer in enumerate(answers):
        if "error" in answer:
            continue
        answer["absent_organs"] = absent
        base = os.path.join(maps_dir, f"{stem}_query{index:04d}")
        save_probability_map(organ_probability_map(label_array, organ_labels, answer["scores"]), affine,
                             base + "_probability.nii.gz")
        render_query_figure(ct_array, label_array, affine, organ_labels, answer["scores"], answer["text"], base + ".png")
        answer["probability_map"], answer["figure"] = base + "_probability.nii.gz", base + ".png"
