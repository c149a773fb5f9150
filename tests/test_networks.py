"""The image networks: shapes per structure, losses, TorchScript, and which structures are valid."""

import pytest
import torch
from torch.nn import functional as F

from medsora.image.losses import BranchCrossEntropyLoss
from medsora.image.networks import ConcatFusion, CrossAttentionFusion, MedSoraImageNet, ViTEncoder, organ_probabilities

H, W, D, HIDDEN = 32, 32, 8, 32


def encoders():
    torch.manual_seed(0)
    e2 = ViTEncoder(2, 1, (H, W), (8, 8), hidden_size=HIDDEN, mlp_dim=64, num_layers=2, num_heads=4)
    e3 = ViTEncoder(3, 1, (H, W, D), (16, 16, 8), hidden_size=HIDDEN, mlp_dim=64, num_layers=2, num_heads=4)
    return e2, e3


STRUCTURES = {
    "cross_attention": lambda e2, e3: MedSoraImageNet(e2, e3, CrossAttentionFusion(HIDDEN, 4)),
    "concat": lambda e2, e3: MedSoraImageNet(e2, e3, ConcatFusion(HIDDEN)),
    "2d_only": lambda e2, e3: MedSoraImageNet(e2, None),
    "3d_only": lambda e2, e3: MedSoraImageNet(None, e3),
}
BRANCHES = {"cross_attention": 3, "concat": 3, "2d_only": 1, "3d_only": 1}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_output_and_feature_shapes(structure):
    net = STRUCTURES[structure](*encoders()).eval()
    x = torch.rand(2, 1, H, W, D)
    logits = net(x)
    assert logits.shape == (2, BRANCHES[structure], D, 7)
    features = net.features(x)
    assert features.shape == ((2, 1, HIDDEN) if structure == "3d_only" else (2, D, HIDDEN))
    probabilities = organ_probabilities(logits)
    assert probabilities.shape == (2, 7)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(2))


def test_slices_are_encoded_independently():
    """Changing one slice changes that slice's 2D feature only (eq. 5-6: each slice is fed on its own)."""
    e2, _ = encoders()
    net = MedSoraImageNet(e2, None).eval()
    x = torch.rand(1, 1, H, W, D)
    y = x.clone()
    y[..., 3] = torch.rand(H, W)
    fx, fy = net.encode_slices(x), net.encode_slices(y)
    changed = (fx - fy).abs().amax(dim=-1) > 1e-6
    assert changed.tolist()[0] == [i == 3 for i in range(D)]


def test_cross_attention_fusion_follows_the_paper():
    """F_bar = F2D + crossAttn(Q=f3D, K=V=F2D): the attended vector is a convex mix of projected slice values."""
    torch.manual_seed(0)
    fusion = CrossAttentionFusion(HIDDEN, 4).eval()
    slices, volume = torch.rand(2, D, HIDDEN), torch.rand(2, HIDDEN)
    fused = fusion(slices, volume)
    attended = fused - slices
    # one query: the same attended vector is added to every slice
    torch.testing.assert_close(attended, attended[:, :1].expand_as(attended))
    weights = fusion.attention
    assert weights.shape == (2, 4, 1, D)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 1))
    block = fusion.attention_block
    values = block.to_v(slices).view(2, D, 4, HIDDEN // 4).permute(0, 2, 1, 3)
    mixed = (weights @ values).permute(0, 2, 1, 3).reshape(2, 1, HIDDEN)
    torch.testing.assert_close(attended[:, :1], block.out_proj(mixed))


def test_volume_feature_of_another_size_is_projected():
    fusion = CrossAttentionFusion(HIDDEN, 4, volume_size=48)
    assert fusion(torch.rand(2, D, HIDDEN), torch.rand(2, 48)).shape == (2, D, HIDDEN)
    assert ConcatFusion(HIDDEN, 48)(torch.rand(2, D, HIDDEN), torch.rand(2, 48)).shape == (2, D, HIDDEN)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda e2, e3: MedSoraImageNet(None, None), "neither"),
        (lambda e2, e3: MedSoraImageNet(e2, e3, None), "fusion module is required"),
        (lambda e2, e3: MedSoraImageNet(e2, None, CrossAttentionFusion(HIDDEN, 4)), "needs both"),
    ],
)
def test_invalid_structures_are_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build(*encoders())


@pytest.mark.parametrize("structure", STRUCTURES)
def test_torchscript_matches_eager(structure):
    net = STRUCTURES[structure](*encoders()).eval()
    x = torch.rand(2, 1, H, W, D)
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))


def test_every_parameter_is_trained():
    net = STRUCTURES["cross_attention"](*encoders())
    loss = BranchCrossEntropyLoss()(net(torch.rand(2, 1, H, W, D)), torch.tensor([[1], [4]]))
    loss.backward()
    untouched = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untouched == []


def test_branch_loss_is_the_sum_of_branch_cross_entropies():
    torch.manual_seed(1)
    logits = torch.randn(3, 3, D, 7)
    target = torch.tensor([0, 5, 6])
    expected = sum(F.cross_entropy(logits[:, k].reshape(-1, 7), target.repeat_interleave(D)) for k in range(3))
    torch.testing.assert_close(BranchCrossEntropyLoss()(logits, target.view(3, 1)), expected)
    # a 3D branch repeated over slices costs exactly its own cross-entropy
    volume_logits = torch.randn(3, 7)
    repeated = volume_logits.view(3, 1, 1, 7).expand(3, 1, D, 7)
    torch.testing.assert_close(BranchCrossEntropyLoss()(repeated, target), F.cross_entropy(volume_logits, target))


def test_branch_loss_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(B, K, D, N\)"):
        BranchCrossEntropyLoss()(torch.randn(3, 7), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="one organ class per sample"):
        BranchCrossEntropyLoss()(torch.randn(3, 1, D, 7), torch.tensor([0, 1]))
