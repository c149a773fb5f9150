"""Loading pretrained ViT weights into the slice encoder, checked numerically against Hugging Face's ViT."""

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ViTConfig, ViTModel

from medsora.image import pretrained
from medsora.image.networks import ViTEncoder  # noqa: E402

HIDDEN, LAYERS, HEADS, MLP, IMAGE, PATCH = 32, 2, 4, 64, 32, 8


def hf_vit(num_channels: int = 3, layer_norm_eps: float = 1e-5) -> ViTModel:
    """A tiny random Hugging Face ViT, with non-trivial norms and biases so every weight matters."""
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=MLP,
        image_size=IMAGE,
        patch_size=PATCH,
        num_channels=num_channels,
        hidden_act="gelu",
        qkv_bias=True,
        layer_norm_eps=layer_norm_eps,
    )
    model = ViTModel(config, add_pooling_layer=False).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def encoder(in_channels: int = 3, **kwargs) -> ViTEncoder:
    torch.manual_seed(1)
    args = dict(img_size=IMAGE, patch_size=PATCH, hidden_size=HIDDEN, mlp_dim=MLP, num_layers=LAYERS, num_heads=HEADS)
    args.update(kwargs)
    return ViTEncoder(spatial_dims=2, in_channels=in_channels, **args).eval()


def hf_cls(model: ViTModel, x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's [CLS] feature after the final layer norm."""
    with torch.no_grad():
        return model(pixel_values=x).last_hidden_state[:, 0]


def ours(net: ViTEncoder, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net(x)


def saved_weights(model: ViTModel, directory) -> dict:
    """The model's weights as ``save_pretrained`` writes them (transformers 5 renames its modules in memory)."""
    model.save_pretrained(directory)
    return load_file(str(directory / "model.safetensors"))


def timm_state_dict(hf: dict) -> dict:
    """Saved HF ViT weights under timm's ViT names.

    ``embeddings.cls_token`` -> ``cls_token``; ``embeddings.position_embeddings`` -> ``pos_embed``;
    ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``; per layer ``N``:
    ``layernorm_before`` -> ``blocks.N.norm1``, ``attention.attention.{query,key,value}`` concatenated in that order
    -> ``blocks.N.attn.qkv``, ``attention.output.dense`` -> ``blocks.N.attn.proj``, ``layernorm_after`` ->
    ``blocks.N.norm2``, ``intermediate.dense`` -> ``blocks.N.mlp.fc1``, ``output.dense`` -> ``blocks.N.mlp.fc2``;
    final ``layernorm`` -> ``norm``. A classifier ``head`` is added, as timm checkpoints carry one.
    """
    timm = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
        "head.weight": torch.randn(10, HIDDEN),
        "head.bias": torch.randn(10),
    }
    for n in range(LAYERS):
        layer = f"encoder.layer.{n}."
        for kind in ("weight", "bias"):
            timm[f"blocks.{n}.norm1.{kind}"] = hf[f"{layer}layernorm_before.{kind}"]
            timm[f"blocks.{n}.attn.qkv.{kind}"] = torch.cat(
                [hf[f"{layer}attention.attention.{part}.{kind}"] for part in ("query", "key", "value")]
            )
            timm[f"blocks.{n}.attn.proj.{kind}"] = hf[f"{layer}attention.output.dense.{kind}"]
            timm[f"blocks.{n}.norm2.{kind}"] = hf[f"{layer}layernorm_after.{kind}"]
            timm[f"blocks.{n}.mlp.fc1.{kind}"] = hf[f"{layer}intermediate.dense.{kind}"]
            timm[f"blocks.{n}.mlp.fc2.{kind}"] = hf[f"{layer}output.dense.{kind}"]
    return timm


@pytest.fixture
def hf_dir(tmp_path):
    model = hf_vit()
    model.save_pretrained(tmp_path / "vit")
    return model, str(tmp_path / "vit")


def test_hf_directory_matches_hf_output(hf_dir, caplog):
    model, path = hf_dir
    with caplog.at_level(logging.INFO, logger=pretrained.__name__):
        net = pretrained.load_vit_weights(encoder(), path)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    assert torch.allclose(ours(net, x), hf_cls(model, x), atol=1e-5, rtol=0)
    assert path in caplog.text and "Hugging Face" in caplog.text


def test_default_hf_eps_differs_only_slightly(tmp_path):
    model = hf_vit(layer_norm_eps=1e-12)
    model.save_pretrained(tmp_path)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    difference = (ours(pretrained.load_vit_weights(encoder(), str(tmp_path)), x) - hf_cls(model, x)).abs().max()
    assert difference < 1e-3


def test_grey_encoder_from_rgb_checkpoint(hf_dir):
    model, path = hf_dir
    net = pretrained.load_vit_weights(encoder(in_channels=1), path)
    grey = torch.randn(2, 1, IMAGE, IMAGE)
    assert torch.allclose(ours(net, grey), hf_cls(model, grey.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0)


def test_single_channel_hf_checkpoint(tmp_path):
    model = hf_vit(num_channels=1)
    model.save_pretrained(tmp_path)
    net = pretrained.load_vit_weights(encoder(in_channels=1), str(tmp_path))
    x = torch.randn(2, 1, IMAGE, IMAGE)
    assert torch.allclose(ours(net, x), hf_cls(model, x), atol=1e-5, rtol=0)


def test_other_hf_directories(tmp_path):
    """``vit.``-prefixed keys (as in ``ViTForImageClassification``) in ``pytorch_model.bin``, sharded saves, and
    transformers 5's own key names."""
    model = hf_vit()
    weights = saved_weights(model, tmp_path / "bin")
    (tmp_path / "bin" / "model.safetensors").unlink()
    torch.save({f"vit.{k}": v for k, v in weights.items()}, tmp_path / "bin" / "pytorch_model.bin")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    model.save_pretrained(tmp_path / "native", save_original_format=False)  # transformers 5 ``layers.N`` keys
    x = torch.randn(1, 3, IMAGE, IMAGE)
    for name in ("bin", "sharded", "native"):
        net = pretrained.load_vit_weights(encoder(), str(tmp_path / name))
        assert torch.allclose(ours(net, x), hf_cls(model, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout(tmp_path, suffix):
    model = hf_vit()
    path = tmp_path / f"vit{suffix}"
    state = timm_state_dict(saved_weights(model, tmp_path / "hf"))
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)  # nested, as in training checkpoints
    net = pretrained.load_vit_weights(encoder(in_channels=1), path)
    grey = torch.randn(2, 1, IMAGE, IMAGE)
    assert torch.allclose(ours(net, grey), hf_cls(model, grey.expand(-1, 3, -1, -1)), atol=1e-5, rtol=0)


def test_position_embeddings_follow_the_patch_grid(hf_dir):
    model, path = hf_dir
    hf_pos = model.embeddings.position_embeddings.detach()
    same = pretrained.load_vit_weights(encoder(), path).vit
    assert torch.equal(same.patch_embedding.position_embeddings, hf_pos[:, 1:])
    assert torch.allclose(same.cls_token, model.embeddings.cls_token + hf_pos[:, :1])

    larger = pretrained.load_vit_weights(encoder(in_channels=1, img_size=64), path)  # grid 4x4 -> 8x8
    assert larger.vit.patch_embedding.position_embeddings.shape == (1, 64, HIDDEN)
    out = ours(larger, torch.randn(2, 1, 64, 64))
    assert out.shape == (2, HIDDEN) and torch.isfinite(out).all()


def test_resize_position_embeddings():
    pos = torch.randn(1, 16, HIDDEN)
    assert torch.equal(pretrained.resize_position_embeddings(pos, (4, 4)), pos)
    constant = torch.ones(1, 196, HIDDEN) * torch.arange(HIDDEN)
    resized = pretrained.resize_position_embeddings(constant, (8, 8))  # 224/16 = 14 -> 64/8 = 8
    assert resized.shape == (1, 64, HIDDEN)
    assert torch.allclose(resized, constant[:, :64], atol=1e-5)
    with pytest.raises(ValueError, match="not a square grid"):
        pretrained.resize_position_embeddings(torch.randn(1, 15, HIDDEN), (4, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=64, mlp_dim=MLP), "hidden size: checkpoint 32 vs encoder 64"),
        (dict(num_layers=3), "layer count: checkpoint 2 vs encoder 3"),
        (dict(num_heads=8), "heads: checkpoint 4 vs encoder 8"),
        (dict(patch_size=4), r"patch size: checkpoint \(8, 8\) vs encoder \(4, 4\)"),
        (dict(in_channels=2), "input channels: checkpoint 3 vs encoder 2"),
        (dict(img_size=(32, 64)), "32 patch positions, not a square grid"),
    ],
)
def test_architecture_mismatch_is_a_clear_error(hf_dir, kwargs, message):
    _, path = hf_dir
    with pytest.raises(ValueError, match=message) as error:
        pretrained.load_vit_weights(encoder(**kwargs), path)
    assert path in str(error.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        pretrained.load_vit_weights(encoder(), str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="no ViT weights"):
        pretrained.load_vit_weights(encoder(), str(tmp_path))


def test_unknown_layout(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a ViT checkpoint"):
        pretrained.load_vit_weights(encoder(), str(path))


def test_strict_controls_incomplete_checkpoints(tmp_path):
    state = timm_state_dict(saved_weights(hf_vit(), tmp_path / "hf"))
    del state["norm.weight"], state["norm.bias"]
    path = tmp_path / "no_norm.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="norm.weight"):
        pretrained.load_vit_weights(encoder(), str(path))
    net = encoder()
    norm = net.vit.norm.weight.clone()
    pretrained.load_vit_weights(net, str(path), strict=False)
    assert torch.equal(net.vit.norm.weight, norm)


def test_init_encoder_without_checkpoint_keeps_the_encoder(hf_dir):
    net = encoder()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for checkpoint in (None, ""):
        assert pretrained.init_encoder(net, checkpoint) is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    model, path = hf_dir
    x = torch.randn(1, 3, IMAGE, IMAGE)
    assert torch.allclose(ours(pretrained.init_encoder(net, path), x), hf_cls(model, x), atol=1e-5, rtol=0)
