"""Tests for labkit.core.models: shapes of every architecture, necks, heads, factory errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from labkit.core import models
from labkit.core.models import (
    FlattenLinear,
    Network,
    PooledLinear,
    TorchvisionResNet,
    build_network,
    count_parameters,
    map_shape,
)

# arch, in_channels, image_size, backbone options, expected map (C, H, W)
CASES = [
    ("lenetpp", 1, 28, {"widths": (4, 6, 8), "kernel_size": 3}, (8, 3, 3)),
    ("lenetpp", 1, 28, {"widths": (4, 6, 8), "kernel_size": 5}, (8, 3, 3)),
    ("vgg", 1, 28, {"widths": (4, 6, 8)}, (8, 3, 3)),
    ("vgg", 3, 32, {"widths": (4, 8), "pool_last": False}, (8, 16, 16)),
    ("resnet20", 3, 16, {}, (64, 4, 4)),
    ("resnet18", 3, 16, {}, (512, 2, 2)),
    ("resnet18", 1, 96, {}, (512, 3, 3)),
    ("resnet50", 3, 16, {}, (2048, 2, 2)),
]


@pytest.mark.parametrize("arch,channels,size,options,map_chw", CASES)
def test_forward_all_shapes(arch, channels, size, options, map_chw):
    torch.manual_seed(0)
    net = build_network(arch, channels, num_classes=5, feat_dim=3, image_size=size, **options)
    net.eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        out = net.forward_all(x)
        assert out.feature_map.shape == (2, *map_chw)
        assert out.embedding.shape == (2, 3)
        assert out.logits.shape == (2, 5)
        assert torch.equal(net(x), out.logits)
        assert torch.equal(net.embed(x), out.embedding)
    assert map_shape(net.backbone, channels, size) == map_chw
    assert net.backbone.out_channels == map_chw[0]


def test_default_necks():
    lenet = build_network("lenetpp", 1, 10, 2, widths=(4, 4, 4), kernel_size=3)
    assert isinstance(lenet.neck, FlattenLinear) and lenet.neck.linear.in_features == 4 * 3 * 3
    vgg = build_network("vgg", 1, 10, 2, widths=(4, 4))
    assert isinstance(vgg.neck, PooledLinear) and vgg.neck.pool == "gap"
    assert isinstance(lenet.head, nn.Linear) and lenet.head.bias is None
    assert lenet.head.weight.shape == (10, 2)


def test_network_without_head_returns_embedding():
    torch.manual_seed(0)
    net = build_network("vgg", 1, None, 4, head=None, widths=(4, 4)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        out = net.forward_all(x)
        assert out.logits is None
        assert torch.equal(net(x), out.embedding) and out.embedding.shape == (3, 4)


def test_custom_neck_and_head_modules():
    neck, head = nn.Flatten(), nn.Identity()
    net = build_network("vgg", 1, 10, 2, neck=neck, head=head, widths=(4,))
    assert net.neck is neck and net.head is head
    out = net.eval().forward_all(torch.rand(1, 1, 28, 28))
    assert out.embedding.shape == (1, 4 * 14 * 14) and torch.equal(out.logits, out.embedding)


def test_pooled_linear_maths():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 4, 5)
    gap, gmp = PooledLinear(3, None, "gap"), PooledLinear(3, None, "gmp")
    assert torch.allclose(gap(fmap), fmap.reshape(2, 3, -1).mean(-1))
    assert torch.equal(gmp(fmap), fmap.reshape(2, 3, -1).max(-1).values)
    proj = PooledLinear(3, 2)
    expected = fmap.mean((2, 3)) @ proj.linear.weight.T + proj.linear.bias
    assert torch.allclose(proj(fmap), expected, atol=1e-6)
    flat = FlattenLinear(60, 2)
    assert torch.allclose(flat(fmap), fmap.reshape(2, -1) @ flat.linear.weight.T + flat.linear.bias,
                          atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        PooledLinear(3, 2, "avg")


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "alexnet"}, "alexnet"),
    ({"arch": "vgg", "neck": "attention"}, "neck"),
    ({"arch": "vgg", "head": "cosine"}, "head"),
    ({"arch": "vgg", "num_classes": 1}, "num_classes"),
    ({"arch": "vgg", "num_classes": None}, "num_classes"),
])
def test_factory_errors(kwargs, match):
    options = {"in_channels": 1, "feat_dim": 2, "widths": (4,)} if kwargs["arch"] == "vgg" else {}
    options.update(kwargs)
    with pytest.raises(ValueError, match=match):
        build_network(**options)


def test_backbone_option_errors():
    with pytest.raises(ValueError, match="6n"):
        models.CifarResNet(3, depth=21)
    with pytest.raises(ValueError):
        models.LeNetPPTrunk(1, widths=(4, 4))
    with pytest.raises(ValueError):
        models.LeNetPPTrunk(1, kernel_size=4)
    with pytest.raises(ValueError, match="18 or 50"):
        TorchvisionResNet(34)


def test_lenetpp_options_follow_profile(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    assert models.lenetpp_options() == {"widths": (32, 64, 128), "kernel_size": 5}
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    assert models.lenetpp_options()["kernel_size"] == 3


def test_torchvision_resnet_loads_local_weights(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    torch.manual_seed(2)
    loaded = TorchvisionResNet(18, weights_path=path)
    torch.manual_seed(2)
    fresh = TorchvisionResNet(18)
    assert torch.equal(loaded.body[0].weight, reference.conv1.weight)
    assert not torch.equal(fresh.body[0].weight, reference.conv1.weight)
    body = dict(loaded.body.named_parameters())
    assert torch.equal(body["7.1.conv2.weight"], reference.layer4[1].conv2.weight)
    assert torch.equal(dict(loaded.body.named_buffers())["1.running_mean"], reference.bn1.running_mean)
    reference.eval()
    loaded.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        trunk = nn.Sequential(*list(reference.children())[:-2])
        assert torch.allclose(loaded(x), trunk(x), atol=1e-5)


def test_torchvision_resnet_says_when_it_replaces_the_loaded_stem(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    with pytest.warns(UserWarning, match="conv1 is re-initialised"):
        small = TorchvisionResNet(18, weights_path=path, small_input=True)
    assert small.body[0].kernel_size == (3, 3)
    assert torch.equal(small.body[4][0].conv1.weight, reference.layer1[0].conv1.weight)


def test_torchvision_resnet_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        TorchvisionResNet(18, weights_path=tmp_path / "nothere.pt")


def test_torchvision_resnet_rejects_unrelated_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"module.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="conv1.weight"):
        TorchvisionResNet(18, weights_path=path)


def test_count_parameters():
    net = Network(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(4, 3, bias=False))
    assert count_parameters(net) == 2 * 9 + 2 + 12
    net.head.weight.requires_grad_(False)
    assert count_parameters(net) == 20 and count_parameters(net, trainable_only=False) == 32


def test_eval_mode_restores_the_mode_even_after_an_error():
    from labkit.core.models import eval_mode

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    for mode in (True, False):
        net.train(mode)
        with eval_mode(net):
            assert not any(m.training for m in net.modules())
        assert all(m.training == mode for m in net.modules())
    net.train()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert net.training
    # a mixed state comes back as it was: a frozen (eval) part stays frozen
    net[1].eval()
    with eval_mode(net):
        pass
    assert net.training and net[0].training and not net[1].training


def test_small_vgg_dropout_goes_between_blocks_only():
    vgg = models.SmallVGG(1, (4, 8, 16), dropout=(0.2, 0.3))
    assert [m.p for m in vgg if isinstance(m, nn.Dropout)] == [0.2, 0.3]
    assert isinstance(list(vgg)[-1], nn.MaxPool2d)
    with pytest.raises(ValueError, match="at most 2 dropout rates"):
        models.SmallVGG(1, (4, 8, 16), dropout=(0.2, 0.3, 0.4))


def test_he_uniform_matches_keras_bounds():
    torch.manual_seed(0)
    layer = models.he_uniform_(nn.Linear(600, 400))
    bound = (6 / 600) ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.99 * bound
    assert layer.weight.std().item() == pytest.approx((2 / 600) ** 0.5, rel=0.02)
    assert not layer.bias.any()


def test_mobilenet_lite_is_depthwise_separable():
    net = models.build_backbone("mobilenet", 1, widths=(8, 16, 32))
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 2 and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert all(c.kernel_size == (1, 1) for c in convs[2::2])  # pointwise after each depthwise


@pytest.mark.parametrize("arch,shape", [("mlp", (256, 1, 1)), ("lenet5", (16, 5, 5)),
                                        ("mobilenet", (128, 4, 4)), ("tiny", (64, 4, 4))])
def test_small_trunks_give_the_documented_maps(arch, shape):
    backbone = models.build_backbone(arch, 1, 28)
    assert models.map_shape(backbone, 1, 28) == shape and backbone.out_channels == shape[0]
