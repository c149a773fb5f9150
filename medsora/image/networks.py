# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Image side of Med-SORA (paper section 3.3): 2D slice ViT, 3D volume ViT and their fusion.

Tensor layout follows MONAI: an organ sample is ``(B, 1, H, W, D)`` with the ``D`` sampled axial slices on the
last axis. The paper writes the same volume as ``D x H x W``, so its 3D patch ``(8, 16, 16)`` is ``(16, 16, 8)`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import CrossAttentionBlock
from monai.networks.nets import ViT
from torch import nn

__all__ = [
    "ViTEncoder",
    "CrossAttentionFusion",
    "ConcatFusion",
    "MedSoraImageNet",
    "BRANCHES",
    "organ_probabilities",
    "parameter_groups",
]

#: Names of the classification branches, in the order they appear on the output's branch axis.
BRANCHES = ("2d", "3d", "fusion")


class ViTEncoder(nn.Module):
    """MONAI ``ViT`` that returns the final [CLS] feature instead of a ``(logits, hidden_states)`` tuple.

    The paper takes the [CLS] token as the global feature of a slice (eq. 5) or of the volume (eq. 8).

    Args:
        spatial_dims: 2 for the slice encoder, 3 for the volume encoder.
        in_channels: image channels.
        img_size: input spatial size, MONAI axis order.
        patch_size: patch size, MONAI axis order.
        hidden_size: feature size ``d_img``.
        mlp_dim: transformer MLP width.
        num_layers: transformer blocks.
        num_heads: attention heads.
        dropout_rate: dropout inside the transformer.
        qkv_bias: bias on the attention projections (``True`` matches ImageNet-21k ViT checkpoints).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        img_size: Sequence[int] | int,
        patch_size: Sequence[int] | int,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.vit = ViT(
            in_channels=in_channels,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type="learnable",
            classification=True,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
            qkv_bias=qkv_bias,
        )
        # the [CLS] token after the final norm is the feature; the ViT's own head would project it away
        self.vit.classification_head = nn.Identity()
        # MONAI's blocks keep a norm for an optional cross-attention that a ViT never runs; an unused parameter
        # would make DistributedDataParallel fail, so it is removed
        for block in self.vit.blocks:
            block.norm_cross_attn = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, *img_size)`` to ``(B, hidden_size)``."""
        return self.vit(x)[0]


class CrossAttentionFusion(nn.Module):
    """Paper eq. 9-10: ``F_out = crossAttn(Q=f3D, K=V=F2D)`` and ``F_bar = F2D + F_out``.

    The single 3D query attends over the slice features, so the attended vector is added to every slice feature.
    The attention over slices of the last call is kept in ``attention`` (``(B, heads, 1, D)``) for visualisation.

    Args:
        hidden_size: slice feature size ``d_img``.
        num_heads: attention heads.
        volume_size: 3D feature size, when it differs from ``hidden_size``.
        dropout_rate: attention dropout.
    """

    def __init__(self, hidden_size: int, num_heads: int, volume_size: int | None = None, dropout_rate: float = 0.0):
        super().__init__()
        self.attention_block = CrossAttentionBlock(
            hidden_size=hidden_size,
            num_heads=num_heads,
            dropout_rate=dropout_rate,
            hidden_input_size=volume_size or hidden_size,
            context_input_size=hidden_size,
            qkv_bias=True,
            save_attn=True,
        )
        self.out_size = hidden_size
        self.project_out = nn.Linear(volume_size, hidden_size) if volume_size and volume_size != hidden_size else None

    @property
    def attention(self) -> torch.Tensor:
        return self.attention_block.att_mat

    def forward(self, slice_features: torch.Tensor, volume_feature: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, D, d)`` slice features with a ``(B, d3)`` volume feature into ``(B, D, d)``."""
        attended = self.attention_block(volume_feature.unsqueeze(1), context=slice_features)
        if self.project_out is not None:
            attended = self.project_out(attended)
        return slice_features + attended


class ConcatFusion(nn.Module):
    """Ablation of the paper's Table 3: concatenate the volume feature to each slice feature, project back to ``d``.

    Args:
        hidden_size: slice feature size ``d_img`` (also the output size).
        volume_size: 3D feature size; defaults to ``hidden_size``.
    """

    def __init__(self, hidden_size: int, volume_size: int | None = None):
        super().__init__()
        self.out_size = hidden_size
        self.project = nn.Linear(hidden_size + (volume_size or hidden_size), hidden_size)

    def forward(self, slice_features: torch.Tensor, volume_feature: torch.Tensor) -> torch.Tensor:
        """Fuse ``(B, D, d)`` slice features with a ``(B, d3)`` volume feature into ``(B, D, d)``."""
        volume = volume_feature.unsqueeze(1).expand(-1, slice_features.shape[1], -1)
        return self.project(torch.cat([slice_features, volume], dim=-1))


def _mlp_head(in_features: int, num_classes: int, dropout_rate: float) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Linear(in_features, in_features),
        nn.GELU(),
        nn.Dropout(dropout_rate),
        nn.Linear(in_features, num_classes),
    )


class MedSoraImageNet(nn.Module):
    """Organ classifier over 2D slice and 3D volume features, with one MLP head per branch (paper section 3.4).

    Which encoders are given selects the structure compared in the paper's Table 3, on one code path:
    both encoders and a fusion module (cross-attention or concat), the 2D encoder alone, or the 3D encoder alone.

    ``forward`` returns logits of shape ``(B, K, D, num_classes)``: one row per branch in ``branches`` (a subset of
    ``BRANCHES`` in that order), one column per sampled slice. Slice-level branches are per slice; the 3D branch is
    repeated over slices, so a per-slice cross-entropy summed over branches is exactly ``L2D + L3D + L_fusion``.
    The last branch is the model's prediction.

    Args:
        encoder_2d: slice encoder, ``(N, 1, H, W) -> (N, d)``, or ``None``.
        encoder_3d: volume encoder, ``(B, 1, H, W, D) -> (B, d3)``, or ``None``.
        fusion: module ``(F2D, f3D) -> F_bar``; required when both encoders are given, else ``None``.
        num_classes: number of organs.
        head_dropout: dropout in the classification heads.
    """

    def __init__(
        self,
        encoder_2d: nn.Module | None,
        encoder_3d: nn.Module | None,
        fusion: nn.Module | None = None,
        num_classes: int = 7,
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if encoder_2d is None and encoder_3d is None:
            raise ValueError("MedSoraImageNet needs encoder_2d, encoder_3d or both; got neither.")
        if encoder_2d is not None and encoder_3d is not None and fusion is None:
            raise ValueError(
                "with both encoder_2d and encoder_3d a fusion module is required (cross-attention or concat)."
            )
        if fusion is not None and (encoder_2d is None or encoder_3d is None):
            raise ValueError(
                "a fusion module needs both encoder_2d and encoder_3d; set fusion to null for 2D- or 3D-only."
            )
        self.encoder_2d = encoder_2d
        self.encoder_3d = encoder_3d
        self.fusion = fusion
        self.head_2d = _mlp_head(encoder_2d.hidden_size, num_classes, head_dropout) if encoder_2d is not None else None
        self.head_3d = _mlp_head(encoder_3d.hidden_size, num_classes, head_dropout) if encoder_3d is not None else None
        self.head_fusion = _mlp_head(fusion.out_size, num_classes, head_dropout) if fusion is not None else None
        present = (self.head_2d is not None, self.head_3d is not None, self.head_fusion is not None)
        self.branches = [name for name, on in zip(BRANCHES, present) if on]
        self.num_classes = num_classes

    def encode_slices(self, x: torch.Tensor) -> torch.Tensor:
        """``F2D``: encode each of the ``D`` slices of ``(B, C, H, W, D)`` on its own, giving ``(B, D, d)``."""
        if self.encoder_2d is None:
            raise RuntimeError("this network has no 2D encoder")
        b, c, h, w, d = x.shape
        slices = x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)
        return self.encoder_2d(slices).reshape(b, d, -1)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(F2D, f3D, F_bar)``, each ``None`` where this structure has no such feature."""
        slice_features = self.encode_slices(x) if self.encoder_2d is not None else None
        volume_feature = self.encoder_3d(x) if self.encoder_3d is not None else None
        fused: torch.Tensor | None = None
        if self.fusion is not None and slice_features is not None and volume_feature is not None:
            fused = self.fusion(slice_features, volume_feature)
        return slice_features, volume_feature, fused

    @staticmethod
    def _features(
        slice_features: torch.Tensor | None, volume_feature: torch.Tensor | None, fused: torch.Tensor | None
    ) -> torch.Tensor:
        if fused is not None:
            return fused
        if slice_features is not None:
            return slice_features
        assert volume_feature is not None
        return volume_feature.unsqueeze(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Organ features used for alignment with text: ``F_bar`` of shape ``(B, D, d)`` (``(B, 1, d)`` 3D-only)."""
        return self._features(*self._encode(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features(x)`` and ``forward(x)`` from one pass: the features with the prediction that vouches for them."""
        encoded = self._encode(x)
        return self._features(*encoded), self._logits(x, *encoded)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map an organ sample ``(B, 1, H, W, D)`` to branch logits ``(B, K, D, num_classes)``."""
        return self._logits(x, *self._encode(x))

    def _logits(
        self,
        x: torch.Tensor,
        slice_features: torch.Tensor | None,
        volume_feature: torch.Tensor | None,
        fused: torch.Tensor | None,
    ) -> torch.Tensor:
        logits: list[torch.Tensor] = []
        if self.head_2d is not None and slice_features is not None:
            logits.append(self.head_2d(slice_features))
        if self.head_3d is not None and volume_feature is not None:
            logits.append(self.head_3d(volume_feature).unsqueeze(1).expand(-1, x.shape[-1], -1))
        if self.head_fusion is not None and fused is not None:
            logits.append(self.head_fusion(fused))
        return torch.stack(logits, dim=1)


def organ_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Organ probabilities of one sample or a batch: softmax of the last (prediction) branch's slice-averaged logits.

    Args:
        logits: ``(K, D, N)`` or ``(B, K, D, N)`` from ``MedSoraImageNet``.

    Returns:
        ``(N,)`` or ``(B, N)`` probabilities.
    """
    return logits[..., -1, :, :].mean(dim=-2).softmax(dim=-1)


def parameter_groups(network: MedSoraImageNet, lr_2d: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the (pretrained) slice encoder at ``lr_2d``, everything else at the optimizer's lr.

    A network without a slice encoder (the 3D-only ablation) has only the second group.
    """
    groups = [{"params": list(network.encoder_2d.parameters()), "lr": lr_2d}] if network.encoder_2d is not None else []
    rest = [p for name, p in network.named_parameters() if not name.startswith("encoder_2d.")]
    return groups + [{"params": rest}]
