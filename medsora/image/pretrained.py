# Copyright Med-SORA contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see LICENSE.

"""Initialise the slice encoder from an ImageNet-21k pretrained ViT (paper section 4.1).

Two checkpoint layouts are read: a Hugging Face ``transformers`` ViT directory (``save_pretrained`` output) and a
timm-style state dict file. Hugging Face keys are first renamed to the timm layout, so a single conversion maps
either onto MONAI's ``ViT``:

===========================================  ==========================================
timm key                                     MONAI ``ViT`` key
===========================================  ==========================================
``cls_token`` + ``pos_embed[:, 0]``          ``cls_token``
``pos_embed[:, 1:]`` (resized to the grid)   ``patch_embedding.position_embeddings``
``patch_embed.proj.*`` (channels adapted)    ``patch_embedding.patch_embeddings.*``
``blocks.N.norm1`` / ``norm2``               ``blocks.N.norm1`` / ``norm2``
``blocks.N.attn.qkv``                        ``blocks.N.attn.qkv``
``blocks.N.attn.proj``                       ``blocks.N.attn.out_proj``
``blocks.N.mlp.fc1`` / ``fc2``               ``blocks.N.mlp.linear1`` / ``linear2``
``norm``                                     ``norm``
===========================================  ==========================================

MONAI adds position embeddings to the patch tokens only and prepends the [CLS] token afterwards, so the [CLS]
position embedding is folded into ``cls_token``. MONAI's fused ``qkv`` output is split as ``(qkv, heads, head_dim)``,
the same order as timm's ``qkv`` and as concatenating Hugging Face's ``query``, ``key`` and ``value``.
MONAI's layer norms use ``eps=1e-5`` where Hugging Face ViTs use ``1e-12``; the outputs differ only marginally.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from medsora.image.networks import ViTEncoder
from medsora.stages import safe_load

__all__ = ["load_vit_weights", "init_encoder", "resize_position_embeddings"]

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

#: Hugging Face ViT keys outside the transformer layers and their timm names.
_HF_TO_TIMM = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
#: Hugging Face layer sub-modules (saved layout, and the ``layers.N`` layout of transformers 5 in memory) and their
#: timm names.
_HF_TO_TIMM_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
#: Hugging Face query, key and value projections and their position in the fused ``qkv``.
_HF_QKV = {
    "attention.attention.query": 0,
    "attention.attention.key": 1,
    "attention.attention.value": 2,
    "attention.q_proj": 0,
    "attention.k_proj": 1,
    "attention.v_proj": 2,
}
_HF_LAYER = re.compile(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)")

#: timm block sub-module names and their MONAI names.
_TIMM_TO_MONAI_BLOCK = {
    "norm1": "norm1",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.out_proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.linear1",
    "mlp.fc2": "mlp.linear2",
}
_TIMM_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")

_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass
class _Checkpoint:
    """Weights in the timm layout, with what the checkpoint's config states about the architecture."""

    path: str
    weights: StateDict
    layout: str
    config: dict


def _read_weight_file(path: str) -> StateDict:
    """Read a ``.safetensors`` file or a ``torch.save`` state dict (tensors only, so nothing is executed)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    state = safe_load(path)
    # training checkpoints often nest the weights under one of these keys
    for key in ("model", "state_dict", "module"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _read_hf_directory(path: str) -> tuple[StateDict, dict]:
    """Weights and ``config.json`` of a ``save_pretrained`` directory, single file or sharded.

    Raises:
        FileNotFoundError: the directory holds no known weight file.
    """
    config_path = os.path.join(path, "config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    for name in _HF_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            return _read_weight_file(os.path.join(path, name)), config
    for name in _HF_INDEX_FILES:
        if os.path.isfile(os.path.join(path, name)):
            shards = sorted(set(_read_json(os.path.join(path, name))["weight_map"].values()))
            weights: StateDict = {}
            for shard in shards:
                weights.update(_read_weight_file(os.path.join(path, shard)))
            return weights, config
    raise FileNotFoundError(
        f"no ViT weights in '{path}': expected one of {', '.join(_HF_WEIGHT_FILES + _HF_INDEX_FILES)}."
    )


def _strip_prefix(weights: StateDict, path: str) -> tuple[StateDict, str]:
    """Remove a wrapper prefix such as ``vit.`` or ``module.`` and tell the layout (``"Hugging Face"`` or ``"timm"``).

    Raises:
        ValueError: no [CLS] token key, so this is not a ViT checkpoint of a known layout.
    """
    cls_keys = [key for key in weights if key.endswith("cls_token")]
    if len(cls_keys) != 1:
        raise ValueError(f"'{path}' is not a ViT checkpoint of a known layout: expected one '*cls_token' key.")
    prefix = cls_keys[0][: -len("cls_token")]
    layout = "Hugging Face" if prefix.endswith("embeddings.") else "timm"
    if layout == "Hugging Face":
        prefix = prefix[: -len("embeddings.")]
    return {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}, layout


def _hf_to_timm(weights: StateDict) -> StateDict:
    """Rename Hugging Face ViT keys to timm's and fuse query, key and value into ``qkv``.

    Keys of no known pattern (pooler, classifier) are dropped.
    """
    renamed = {_HF_TO_TIMM[key]: value for key, value in weights.items() if key in _HF_TO_TIMM}
    separate: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in weights.items():
        layer = _HF_LAYER.fullmatch(key)
        if not layer:
            continue
        index, name, kind = layer.groups()
        if name in _HF_TO_TIMM_LAYER:
            renamed[f"blocks.{index}.{_HF_TO_TIMM_LAYER[name]}.{kind}"] = value
        elif name in _HF_QKV:
            separate.setdefault(f"blocks.{index}.attn.qkv.{kind}", {})[_HF_QKV[name]] = value
    for key, parts in separate.items():
        if len(parts) == 3:
            renamed[key] = torch.cat([parts[0], parts[1], parts[2]])
    return renamed


def _read_checkpoint(path: str) -> _Checkpoint:
    """Read a Hugging Face directory or a timm-style file into the timm layout.

    Raises:
        FileNotFoundError: ``path`` does not exist or the directory holds no weights.
        ValueError: the keys are of no known ViT layout.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"pretrained ViT checkpoint '{path}' does not exist.")
    weights, config = _read_hf_directory(path) if os.path.isdir(path) else (_read_weight_file(path), {})
    weights, layout = _strip_prefix(weights, path)
    if layout == "Hugging Face":
        weights = _hf_to_timm(weights)
    return _Checkpoint(path=path, weights=weights, layout=layout, config=config)


def _count_blocks(weights: StateDict) -> int:
    indices = {int(match.group(1)) for key in weights if (match := _TIMM_BLOCK.fullmatch(key))}
    return max(indices) + 1 if indices else 0


def _architecture_pairs(encoder: ViTEncoder, checkpoint: _Checkpoint) -> dict[str, tuple]:
    """``name: (checkpoint value, encoder value)`` for every architecture property the checkpoint reveals.

    The number of heads is not visible in the weights, so it is compared only where a config states it.
    """
    weights, vit = checkpoint.weights, encoder.vit
    attention, kernel = vit.blocks[0].attn, vit.patch_embedding.patch_embeddings.weight
    pairs: dict[str, tuple] = {
        "hidden size": (weights["cls_token"].shape[-1], vit.norm.normalized_shape[0]),
        "layer count": (_count_blocks(weights), len(vit.blocks)),
        "heads": (checkpoint.config.get("num_attention_heads", attention.num_heads), attention.num_heads),
        # MONAI's MLP uses the exact (erf) GELU
        "MLP activation": (checkpoint.config.get("hidden_act", "gelu"), "gelu"),
    }
    if "blocks.0.mlp.fc1.weight" in weights:
        pairs["MLP size"] = (weights["blocks.0.mlp.fc1.weight"].shape[0], vit.blocks[0].mlp.linear1.out_features)
    if "patch_embed.proj.weight" in weights:
        source = weights["patch_embed.proj.weight"]
        pairs["patch size"] = (tuple(source.shape[2:]), tuple(kernel.shape[2:]))
        if kernel.shape[1] != 1:  # one channel is adapted from any number
            pairs["input channels"] = (source.shape[1], kernel.shape[1])
    return pairs


def _validate(encoder: ViTEncoder, checkpoint: _Checkpoint) -> None:
    """Check that the checkpoint's architecture matches the encoder's, so a wrong file fails with a clear message.

    Raises:
        ValueError: naming the checkpoint and every mismatch.
    """
    mismatches = [
        f"{name}: checkpoint {found} vs encoder {expected}"
        for name, (found, expected) in _architecture_pairs(encoder, checkpoint).items()
        if found != expected
    ]
    if mismatches:
        raise ValueError(_misfit(checkpoint.path, "; ".join(mismatches)))


def _misfit(path: str, reason: object) -> str:
    return f"pretrained ViT checkpoint '{path}' does not fit the encoder: {reason}"


def _grid(num_tokens: int, spatial_dims: int, what: str) -> tuple[int, ...]:
    """Side lengths of a square (cubic) patch grid of ``num_tokens`` patches.

    Raises:
        ValueError: ``num_tokens`` is no square (cube), so the grid cannot be inferred.
    """
    side = round(num_tokens ** (1.0 / spatial_dims))
    if side**spatial_dims != num_tokens:
        raise ValueError(f"{what} has {num_tokens} patch positions, not a square grid; cannot resize it.")
    return (side,) * spatial_dims


def resize_position_embeddings(pos: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Bicubically resample ``(1, N, d)`` patch position embeddings of a square grid onto ``grid``.

    Needed when the encoder's patch grid differs from pretraining (e.g. 224/16 = 14 against 64/8 = 8).

    Args:
        pos: patch position embeddings, without the [CLS] position.
        grid: target grid (2D), MONAI axis order.

    Returns:
        ``(1, prod(grid), d)``; ``pos`` itself when the grid is unchanged.
    """
    source = _grid(pos.shape[1], len(grid), "the checkpoint's position embedding")
    if source == tuple(grid):
        return pos
    image = pos.reshape(1, *source, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image.float(), size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]).to(pos.dtype)


def _adapt_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Patch-embedding kernel for ``in_channels`` inputs: a grey image sums the RGB kernels.

    Summing keeps the response to a grey image replicated to RGB unchanged.
    """
    if weight.shape[1] == in_channels:
        return weight
    return weight.sum(dim=1, keepdim=True)


def _timm_to_monai(encoder: ViTEncoder, weights: StateDict) -> StateDict:
    """Map timm-layout weights onto MONAI ``ViT`` names, adapting [CLS], position embeddings and channels."""
    embedding = encoder.vit.patch_embedding
    target_pos = embedding.position_embeddings
    converted: StateDict = {}
    if "cls_token" in weights and "pos_embed" in weights:
        pos = weights["pos_embed"]
        converted["cls_token"] = weights["cls_token"] + pos[:, :1]
        spatial_dims = embedding.patch_embeddings.weight.dim() - 2
        grid = _grid(target_pos.shape[1], spatial_dims, "the encoder")
        converted["patch_embedding.position_embeddings"] = resize_position_embeddings(pos[:, 1:], grid)
    if "patch_embed.proj.weight" in weights:
        in_channels = embedding.patch_embeddings.weight.shape[1]
        converted["patch_embedding.patch_embeddings.weight"] = _adapt_channels(
            weights["patch_embed.proj.weight"], in_channels
        )
    if "patch_embed.proj.bias" in weights:
        converted["patch_embedding.patch_embeddings.bias"] = weights["patch_embed.proj.bias"]
    for key, value in weights.items():
        block = _TIMM_BLOCK.fullmatch(key)
        if block and block.group(2) in _TIMM_TO_MONAI_BLOCK:
            index, name, kind = block.groups()
            converted[f"blocks.{index}.{_TIMM_TO_MONAI_BLOCK[name]}.{kind}"] = value
        elif key in ("norm.weight", "norm.bias"):
            converted[key] = value
    return converted


def _shape(tensor: torch.Tensor | None) -> tuple[int, ...] | None:
    return tuple(tensor.shape) if tensor is not None else None


def load_vit_weights(encoder: ViTEncoder, checkpoint: str | os.PathLike, strict: bool = True) -> ViTEncoder:
    """Load a pretrained ViT (Hugging Face directory or timm-style file) into ``encoder.vit``, in place.

    The paper initialises its slice encoder from an ImageNet-21k ViT-L/16; this adapts such a checkpoint to the
    encoder: RGB kernels summed for one channel, [CLS] position folded into ``cls_token``, position embeddings
    bicubically resized to the encoder's patch grid, and query/key/value fused in MONAI's ``qkv`` layout.

    Args:
        encoder: the encoder to initialise.
        checkpoint: a ``save_pretrained`` directory (``config.json`` with ``model.safetensors`` or
            ``pytorch_model.bin``) or a ``.safetensors``/``.pth``/``.bin`` state dict with timm keys.
        strict: require every encoder parameter to be loaded.

    Returns:
        ``encoder``, with the pretrained weights.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist or holds no weight file.
        ValueError: unknown key layout, an architecture mismatch (hidden size, layer count, heads, patch size,
            MLP size, channels), or, with ``strict``, encoder parameters the checkpoint lacks.
    """
    path = os.fspath(checkpoint)
    source = _read_checkpoint(path)
    _validate(encoder, source)
    try:
        converted = _timm_to_monai(encoder, source.weights)
        result = encoder.vit.load_state_dict(converted, strict=strict)
    except (RuntimeError, ValueError) as error:  # a grid that cannot be resized; missing or misshapen tensors
        raise ValueError(_misfit(path, error)) from error
    logger.info(
        "loaded %s ViT weights from '%s' (%d tensors: %d layers, hidden size %d); "
        "patch kernel %s -> %s, position embeddings %s -> %s",
        source.layout,
        path,
        len(converted),
        len(encoder.vit.blocks),
        encoder.hidden_size,
        _shape(source.weights.get("patch_embed.proj.weight")),
        _shape(converted.get("patch_embedding.patch_embeddings.weight")),
        _shape(source.weights.get("pos_embed")),
        _shape(converted.get("patch_embedding.position_embeddings")),
    )
    if result.missing_keys:
        logger.warning("parameters left at their initialisation: %s", ", ".join(result.missing_keys))
    return encoder


def init_encoder(encoder: ViTEncoder, checkpoint: str | None) -> ViTEncoder:
    """Return ``encoder``, loaded from ``checkpoint`` when one is given (for bundle configs, where it may be null).

    Args:
        encoder: the encoder, freshly built by the config.
        checkpoint: path of a pretrained ViT, or ``None``/``""`` to keep the random initialisation.

    Returns:
        ``encoder``.

    Raises:
        FileNotFoundError, ValueError: as ``load_vit_weights``.
    """
    if not checkpoint:
        return encoder
    return load_vit_weights(encoder, checkpoint)
