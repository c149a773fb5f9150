# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Text-image alignment (paper section 3.4, eqs. 12-13) and the query model it produces.

``W_align`` projects the text feature ``f_bar`` into the fused image feature space; InfoNCE over ``avgSim`` (the
mean cosine similarity over an organ's D slice features and a set of texts) pulls each organ's slices towards its
own symptom texts. The trained image network is only read: its organ features are computed once per CT into a
feature bank, and a linear image projection (initialised to the identity) is trained with ``W_align`` in place of
the paper's joint training of the image extractor, because the frozen classifier's organ features are too alike in
cosine terms to be told apart by a text projection alone. The result, :class:`TextImageAligner`, holds everything a
text query needs (text MLP, domain gate, ``W_align``, reference organ features, out-of-domain threshold), so queries
need no CT at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from medsora.atomic_io import atomic_write
from medsora.text.model import DomainGate, SymptomTextModel
from medsora.thresholds import calibrate_threshold

__all__ = [
    "OrganTextGroups",
    "prepare_alignment_batch",
    "TextImageAligner",
    "AlignmentInfoNCELoss",
    "finalize_aligner",
    "save_aligner",
]


class OrganTextGroups(Dataset):
    """Alignment samples: for every organ, ``texts_per_organ`` of its texts and one CT's features of that organ.

    Texts and CTs are drawn at random (torch's global generator, reseeded per epoch by ``EpochSeedHandler``), so
    each epoch pairs texts with other texts and other patients.

    Args:
        embeddings: ``(N, dim)`` frozen embeddings of the training texts.
        organs: ``(N,)`` organ index of each text.
        features: ``(C, K, D, d)`` feature bank; ``present``: ``(C, K)``.
        texts_per_organ: ``N_txt`` of eq. 13.
        length: samples per epoch (default: one per ``K * texts_per_organ`` training texts).
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        organs: torch.Tensor,
        features: torch.Tensor,
        present: torch.Tensor,
        texts_per_organ: int = 1,
        length: int | None = None,
    ) -> None:
        num_organs = features.shape[1]
        self.text_index = [torch.nonzero(organs == k).reshape(-1) for k in range(num_organs)]
        self.case_index = [torch.nonzero(present[:, k]).reshape(-1) for k in range(num_organs)]
        empty = [k for k in range(num_organs) if len(self.text_index[k]) == 0 or len(self.case_index[k]) == 0]
        if empty:
            raise ValueError(f"organ classes {empty} have no training text or no CT in the feature bank.")
        self.embeddings, self.features = embeddings, features
        self.texts_per_organ = texts_per_organ
        self.length = length or max(1, len(embeddings) // (num_organs * texts_per_organ))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, _: int) -> dict[str, torch.Tensor]:
        texts, images = [], []
        for k, (text_ids, case_ids) in enumerate(zip(self.text_index, self.case_index)):
            texts.append(self.embeddings[text_ids[torch.randint(len(text_ids), (self.texts_per_organ,))]])
            images.append(self.features[case_ids[torch.randint(len(case_ids), ())], k])
        return {"text": torch.stack(texts), "image": torch.stack(images), "target": torch.arange(len(texts))}


def prepare_alignment_batch(
    batch: dict[str, torch.Tensor], device: torch.device | str, non_blocking: bool = False, **_: Any
):
    """``prepare_batch`` for :class:`OrganTextGroups`: the network gets ``(texts, image_features)``."""
    to = lambda key: batch[key].to(device, non_blocking=non_blocking)  # noqa: E731
    return to("text"), to("target"), (to("image"),), {}


class TextImageAligner(nn.Module):
    """``W_align`` over a frozen text model, plus what a query needs: reference organ features and the OOD gate.

    ``forward(texts, images)`` gives ``avgSim`` (after the image projection) of every organ's image features against
    every organ's text set, ``(B, K_image, K_text)``. ``organ_scores`` turns embeddings into organ scores in
    ``[0, 1]``: ``min(1, P(abdominal) / threshold) * (avgSim + 1) / 2`` against the reference features or a
    patient's own organ features.

    Args:
        text_model: trained ``SymptomTextModel`` (frozen here).
        domain_gate: trained ``DomainGate`` (frozen here).
        image_dim: dimension ``d_img`` of the fused image features.
        num_organs: number of organs.
        num_slices: ``D``, slices per organ in the reference features.
    """

    def __init__(
        self,
        text_model: SymptomTextModel,
        domain_gate: DomainGate,
        image_dim: int,
        num_organs: int = 7,
        num_slices: int = 1,
    ) -> None:
        super().__init__()
        self.text_model = text_model.requires_grad_(False).eval()
        self.domain_gate = domain_gate.requires_grad_(False).eval()
        self.w_align = nn.Linear(text_model.feature_dim, image_dim, bias=False)
        self.image_projection = nn.Linear(image_dim, image_dim)
        with torch.no_grad():
            self.image_projection.weight.copy_(torch.eye(image_dim))
            self.image_projection.bias.zero_()
        self.register_buffer("reference", torch.zeros(num_organs, num_slices, image_dim))
        self.register_buffer("threshold", torch.tensor(0.5))
        self.encoder_id = ""

    def get_extra_state(self) -> dict[str, str]:
        """The frozen encoder's identity travels with the weights, so a query with another encoder is refused."""
        return {"encoder_id": self.encoder_id}

    def set_extra_state(self, state: dict[str, str]) -> None:
        self.encoder_id = state.get("encoder_id", "")

    def train(self, mode: bool = True) -> TextImageAligner:
        """Only ``W_align`` trains: the frozen text model and gate stay in eval mode (no dropout)."""
        super().train(mode)
        self.text_model.eval()
        self.domain_gate.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the alignment stage trains: ``W_align`` and the image projection (text model and gate stay frozen)."""
        return [*self.w_align.parameters(), *self.image_projection.parameters()]

    def project(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``f_hat = W_align f_bar``, L2-normalised, for embeddings of shape ``(..., dim)``."""
        return F.normalize(self.w_align(self.text_model.features(embeddings)), dim=-1)

    def slice_mean(self, images: torch.Tensor) -> torch.Tensor:
        """Mean of the projected, L2-normalised slice features ``(..., D, d) -> (..., d)``: its dot product with a
        unit text vector is the mean cosine similarity over slices (eq. 13)."""
        return F.normalize(self.image_projection(images), dim=-1).mean(dim=-2)

    def forward(self, texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            texts: ``(B, K, N_txt, dim)`` embeddings, ``N_txt`` texts per organ.
            images: ``(B, K, D, d_img)`` image features of each organ.

        Returns:
            ``(B, K, K)`` avgSim: row ``i`` image organ, column ``k`` text organ.
        """
        text_mean = self.project(texts).mean(dim=-2)
        return torch.einsum("bid,bkd->bik", self.slice_mean(images), text_mean)

    @torch.no_grad()
    def avg_sim(self, embeddings: torch.Tensor, organ_features: torch.Tensor | None = None) -> torch.Tensor:
        """avgSim ``(Q, K)`` in ``[-1, 1]`` of queries with ``organ_features`` ``(K, D, d)`` (default: reference)."""
        features = self.reference if organ_features is None else organ_features.to(self.reference)
        return self.project(embeddings) @ self.slice_mean(features).T

    @torch.no_grad()
    def organ_scores(self, embeddings: torch.Tensor, organ_features: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(Q, K)`` in ``[0, 1]`` of queries against ``organ_features`` ``(K, D, d)`` (default: reference)."""
        relevance = (self.avg_sim(embeddings, organ_features) + 1.0) / 2.0
        return (relevance * self.domain_weight(embeddings)).clamp(0.0, 1.0)

    @torch.no_grad()
    def abdominal_probability(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The domain gate's ``P(abdominal)``, ``(Q, 1)``."""
        return torch.sigmoid(self.domain_gate(embeddings))

    @torch.no_grad()
    def domain_weight(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``min(1, P(abdominal) / threshold)``, ``(Q, 1)``: in-domain texts keep their scores unchanged (so ranking
        queries by an organ's score is not disturbed by the gate); the others are scaled down towards 0."""
        return (self.abdominal_probability(embeddings) / self.threshold).clamp(max=1.0)

    @torch.no_grad()
    def in_domain(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Whether each text points to the abdomen: ``P(abdominal) >= threshold``, ``(Q,)`` bool."""
        return self.abdominal_probability(embeddings)[:, 0] >= self.threshold

    @torch.no_grad()
    def text_head_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The text head's own soft-label predictions ``(Q, K)``, without images (a diagnostic)."""
        return torch.sigmoid(self.text_model(embeddings))


class AlignmentInfoNCELoss(nn.Module):
    """InfoNCE over avgSim with temperature ``tau`` (eq. 12).

    ``image_to_text`` is the paper's direction: each organ's slices pick their own organ's texts among all organs'
    texts. ``text_to_image`` adds the direction a query is answered in: a text set picks its organ.

    Args:
        temperature: ``tau``; the paper uses 0.1.
        directions: any of ``"image_to_text"``, ``"text_to_image"``; the mean of the chosen terms.
    """

    def __init__(self, temperature: float = 0.1, directions: Sequence[str] = ("image_to_text",)) -> None:
        super().__init__()
        unknown = set(directions) - {"image_to_text", "text_to_image"}
        if unknown or not directions:
            raise ValueError(
                f"directions must be a non-empty subset of image_to_text, text_to_image; got {directions}."
            )
        self.temperature = temperature
        self.directions = tuple(directions)

    def forward(self, avg_sim: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = avg_sim / self.temperature
        k = logits.shape[-1]
        terms = []
        if "image_to_text" in self.directions:
            terms.append(F.cross_entropy(logits.reshape(-1, k), target.reshape(-1)))
        if "text_to_image" in self.directions:
            terms.append(F.cross_entropy(logits.transpose(1, 2).reshape(-1, k), target.reshape(-1)))
        return torch.stack(terms).mean()


def finalize_aligner(
    aligner: TextImageAligner,
    features: torch.Tensor,
    present: torch.Tensor,
    in_domain_embeddings: torch.Tensor,
    out_of_domain_embeddings: torch.Tensor,
    encoder_id: str,
    min_in_domain_recall: float | None = None,
) -> TextImageAligner:
    """Store the reference organ features, the out-of-domain threshold and the encoder's identity in the aligner.

    The reference for an organ is the mean of its features over the CTs that have it. The threshold on the domain
    gate's ``P(abdominal)`` is calibrated on held-out abdominal and non-abdominal texts: Youden's J when
    ``min_in_domain_recall`` is ``None``, else the largest threshold keeping that share of the abdominal texts.
    """
    counts = present.sum(dim=0)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).reshape(-1).tolist()
        raise ValueError(
            f"organ classes {missing} are absent from every CT of the feature bank; no reference for them."
        )
    mask = present[..., None, None].to(features)
    reference = (features * mask).sum(dim=0) / counts[:, None, None].to(features)
    aligner.reference = reference.to(aligner.reference)
    inside = aligner.abdominal_probability(in_domain_embeddings)[:, 0]
    outside = aligner.abdominal_probability(out_of_domain_embeddings)[:, 0]
    threshold = calibrate_threshold(inside.numpy(), outside.numpy(), min_in_domain_recall=min_in_domain_recall)
    aligner.threshold.fill_(float(threshold))
    aligner.encoder_id = encoder_id
    return aligner


def save_aligner(aligner: TextImageAligner, path: str) -> str:
    """Write the aligner's state (all a query needs besides the frozen encoder) atomically; returns ``path``."""
    atomic_write(path, lambda tmp: torch.save(aligner.state_dict(), tmp), ".pt")
    return path
