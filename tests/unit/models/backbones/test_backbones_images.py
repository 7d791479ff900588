"""The image backbones: seed 000's small CNN and the CIFAR ResNet, against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import n_params as _params
from mtlkit.config.build import backbone_factory, build_model
from mtlkit.data import DataSplits, FeatureSchema, MultiTaskDataset
from mtlkit.errors import ConfigError, ShapeError
from mtlkit.models.backbones import BACKBONES, ResNet, SmallCNN, cnn, resnet
from mtlkit.tasks import Task


# ---------------------------------------------------------------------------------------------- CNN
def test_cnn_shapes_and_parameter_count() -> None:
    m = cnn((1, 28, 28))
    assert m.out_features == 64 * 7 * 7 == 3136
    assert m(torch.randn(5, 1, 28, 28)).shape == (5, 3136)
    assert _params(m) == (1 * 32 * 25 + 32) + (32 * 64 * 9 + 64)
    m2 = cnn((3, 30, 22), channels=(8, 16), kernel_sizes=(3, 5), out_features=10)
    assert m2.out_features == 10 and m2(torch.randn(2, 3, 30, 22)).shape == (2, 10)
    assert _params(m2) == (3 * 8 * 9 + 8) + (8 * 16 * 25 + 16) + (16 * 7 * 5 * 10 + 10)


def _conv_loop(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'same' 2-D convolution (cross-correlation) by explicit loops, float64: (C,H,W) -> (O,H,W)."""
    c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = np.zeros((c, h + 2 * p, wd + 2 * p))
    xp[:, p : p + h, p : p + wd] = x
    out = np.zeros((o, h, wd))
    for oc in range(o):
        for i in range(h):
            for j in range(wd):
                out[oc, i, j] = b[oc] + (w[oc] * xp[:, i : i + k, j : j + k]).sum()
    return out


def test_cnn_first_convolution_matches_a_loop_and_the_forward_matches_functional_ops() -> None:
    m = cnn((2, 8, 8), channels=(3, 4), kernel_sizes=(5, 3)).double()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    conv1, conv2 = m.features[0], m.features[3]
    first = conv1(x)
    for n in range(2):
        ref = _conv_loop(x[n].numpy(), conv1.weight.detach().numpy(), conv1.bias.detach().numpy())
        np.testing.assert_allclose(first[n].detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    z = F.max_pool2d(F.relu(F.conv2d(x, conv1.weight, conv1.bias, padding=2)), 2)
    z = F.max_pool2d(F.relu(F.conv2d(z, conv2.weight, conv2.bias, padding=1)), 2)
    torch.testing.assert_close(m(x), z.reshape(2, -1))


def test_cnn_rejects_bad_inputs_and_options() -> None:
    m = cnn((1, 28, 28))
    with pytest.raises(
        ShapeError, match=r"cnn backbone expects images of shape \(N, 1, 28, 28\); got \(4, 3, 28, 28\)"
    ):
        m(torch.randn(4, 3, 28, 28))
    with pytest.raises(ShapeError, match="expects float images; got dtype torch.uint8"):
        m(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(
        ValueError, match=r"the cnn backbone takes images of shape \(C, H, W\); got tabular inputs"
    ):
        cnn(FeatureSchema(("a",), (3,), ()))
    with pytest.raises(ValueError, match=r"got feature vectors of width 10"):
        BACKBONES.build("cnn", input_spec=10)
    with pytest.raises(ValueError, match="kernel_sizes must be two odd positive ints"):
        SmallCNN((1, 28, 28), kernel_sizes=(4, 3))
    with pytest.raises(ValueError, match="at least 4x4"):
        SmallCNN((1, 3, 28))


# ---------------------------------------------------------------------------------------------- ResNet
def _resnet_params(c: int, depth: int, w: int, shortcut: str) -> int:
    """Parameter count of a CIFAR ResNet (convolutions without bias, two BN parameters per channel)."""
    n = (depth - 2) // 6
    total = 9 * c * w + 2 * w  # stem
    a = w
    for stage in range(3):
        b = w * 2**stage
        for i in range(n):
            total += 9 * a * b + 2 * b + 9 * b * b + 2 * b
            if shortcut == "conv" and (a != b or (stage > 0 and i == 0)):
                total += a * b + 2 * b
            a = b
    return total


@pytest.mark.parametrize(("depth", "width", "shortcut"), [(8, 16, "pad"), (14, 8, "conv"), (20, 16, "pad")])
def test_resnet_shapes_and_parameter_count(depth: int, width: int, shortcut: str) -> None:
    m = resnet((3, 32, 32), depth=depth, width=width, shortcut=shortcut)  # type: ignore[arg-type]
    assert m.out_features == 4 * width
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4 * width)
    assert _params(m) == _resnet_params(3, depth, width, shortcut)
    assert len(m.blocks) == 3 * (depth - 2) // 6
    if (depth, width) == (20, 16):
        assert _params(m) == 269_722 - 650  # ResNet-20 (0.27M with its 10-class head of 64*10+10)


def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = (1, -1, 1, 1)
    return (x - bn.running_mean.view(shape)) / torch.sqrt(
        bn.running_var.view(shape) + bn.eps
    ) * bn.weight.view(shape) + bn.bias.view(shape)


@pytest.mark.parametrize("shortcut", ["pad", "conv"])
def test_resnet_downsampling_block_matches_a_hand_computation(shortcut: str) -> None:
    m = resnet((3, 16, 16), depth=8, width=4, shortcut=shortcut).double().eval()  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):  # non-trivial running statistics and affine parameters
            for t in (mod.running_mean, mod.weight, mod.bias):
                t.data.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64))
            mod.running_var.data.copy_(
                torch.rand(mod.running_var.shape, generator=g, dtype=torch.float64) + 0.5
            )
    block = m.blocks[1]  # 4 -> 8 channels, stride 2
    x = torch.randn(2, 4, 16, 16, dtype=torch.float64)
    h = F.relu(_bn(F.conv2d(x, block.conv1.weight, stride=2, padding=1), block.bn1))
    h = _bn(F.conv2d(h, block.conv2.weight, padding=1), block.bn2)
    if shortcut == "pad":  # option A: subsample by 2, zero channels 2 before and 2 after
        sc = torch.zeros(2, 8, 8, 8, dtype=torch.float64)
        sc[:, 2:6] = x[:, :, ::2, ::2]
    else:  # option B: 1x1 convolution with stride 2 + batch norm
        sc = _bn(F.conv2d(x, block.project[0].weight, stride=2), block.project[1])
    torch.testing.assert_close(block(x), F.relu(h + sc))
    out = m(torch.randn(3, 3, 16, 16, dtype=torch.float64))
    assert out.shape == (3, 16) and bool((out >= 0).all())  # average of ReLU maps


def test_resnet_rejects_bad_options_and_inputs() -> None:
    with pytest.raises(ValueError, match=r"depth must be 6n \+ 2 .* got 10"):
        ResNet((3, 32, 32), depth=10)
    with pytest.raises(ValueError, match="shortcut must be 'pad' or 'conv'"):
        ResNet((3, 32, 32), shortcut="b")  # type: ignore[arg-type]
    with pytest.raises(
        ShapeError, match=r"resnet backbone expects images of shape \(N, 3, 32, 32\); got \(2, 32, 32, 3\)"
    ):
        resnet((3, 32, 32), depth=8)(torch.randn(2, 32, 32, 3))


# ---------------------------------------------------------------------------------------------- learning
def _bars(n: int, shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with one bright vertical bar; label 1 when it is in the left half."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    x = 0.3 * torch.randn(n, c, h, w, generator=g)
    col = torch.randint(0, w, (n,), generator=g)
    x[torch.arange(n), :, :, col] += 2.0
    return x, (col < w // 2).float()


@pytest.mark.parametrize(
    ("name", "params", "shape"),
    [("cnn", {"channels": [8, 8]}, (1, 12, 12)), ("resnet", {"depth": 8, "width": 4}, (3, 8, 8))],
)
def test_each_backbone_learns_a_toy_problem_quickly(
    name: str, params: dict, shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    body = BACKBONES.build(name, input_spec=shape, **params)
    model = nn.Sequential(body, nn.Linear(body.out_features, 1))
    x, y = _bars(128, shape, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(40):
        opt.zero_grad()
        F.binary_cross_entropy_with_logits(model(x).squeeze(1), y).backward()
        opt.step()
    model.eval()
    xt, yt = _bars(256, shape, seed=2)
    with torch.no_grad():
        acc = ((model(xt).squeeze(1) > 0).float() == yt).float().mean().item()
    assert acc > 0.9, acc


def test_image_backbones_plug_into_configs() -> None:
    tasks = (Task(name="a", kind="binary"), Task(name="b", kind="multiclass", num_classes=3))
    ds = MultiTaskDataset(
        torch.randn(6, 1, 28, 28), {"a": torch.zeros(6), "b": torch.zeros(6, dtype=torch.long)}
    )
    splits = DataSplits(train=ds, val=None, test=None, tasks=tasks, input_spec=(1, 28, 28))
    model = build_model(
        {"name": "shared_bottom", "bottom_dims": [16], "tower_dims": [8]}, splits, {"name": "cnn"}
    )
    out = model(ds.inputs)
    assert out["a"].shape == (6, 1) and out["b"].shape == (6, 3)
    single = build_model({"name": "single_task", "hidden_dims": [4]}, splits, {"name": "resnet", "depth": 8})
    assert single(ds.inputs)["b"].shape == (6, 3)
    with pytest.raises(ConfigError, match=r"backbone \(resnet\): ResNet depth must be 6n \+ 2"):
        backbone_factory({"name": "resnet", "depth": 9}, splits)
