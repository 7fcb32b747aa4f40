"""The model zoo: parameter counts, torchvision key compatibility, shapes, input checks, the paper's details.

Counts and keys are checked on the meta device (free); forward and backward sweeps use narrow nets
(``width_mult``) at batch 1-2 so the file stays fast on two cores. Full-width forwards are marked slow.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import classicnets
from classicnets.errors import ConfigError, InputShapeError
from classicnets.registry import ModelOptionError, UnknownModelError, model_info
from reference import (
    ALEXNET_ONE_TOWER_PARAMS,
    ALEXNET_PAPER_PARAMS,
    D2L_ALEXNET_28_PARAMS,
    D2L_ALEXNET_PARAMS,
    D2L_ALEXNET_SHAPES,
    TORCHVISION_PARAMS,
)

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision_keys"
ALL_MODELS = [
    "alexnet", "alexnet_owt", "alexnet_d2l", "alexnet_28", "cuda_convnet",
    "vgg11", "vgg11_bn", "vgg11_lrn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg16_c",
    "vgg19", "vgg19_bn",
    "nin", "googlenet", "googlenet_d2l",
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
]
# One net per family and block type; the deeper variants reuse the same blocks, so their real-valued
# forward/backward sweeps run with the slow tests.
REPRESENTATIVE = {"alexnet", "alexnet_owt", "alexnet_d2l", "alexnet_28", "vgg11", "vgg11_bn", "nin",
                  "googlenet", "googlenet_d2l", "resnet18", "resnet50"}
SWEEP = [n if n in REPRESENTATIVE else pytest.param(n, marks=pytest.mark.slow) for n in ALL_MODELS]
# Nets whose fc6 takes a fixed-size flattened map: (smallest, largest) input side they accept.
FIXED_SIZE = {"alexnet": (227, 258), "alexnet_d2l": (193, 224), "alexnet_28": (25, 28)}


def meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return classicnets.create_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def side_sizes(name: str) -> tuple[int, int]:
    """(default, minimum) input side of a model."""
    info = model_info(name)
    return info.default_input[1], info.min_input[1]


# ---------------------------------------------------------------------------------------------------
# Registry, metadata, parameter counts


def test_the_zoo_has_every_model():
    assert sorted(classicnets.list_models()) == sorted(ALL_MODELS)
    resnets = ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert classicnets.list_models("resnet*") == resnets


@pytest.mark.parametrize(("name", "kwargs", "expected"), [
    ("alexnet", {}, ALEXNET_PAPER_PARAMS),  # two towers, the paper
    ("alexnet", {"towers": 1}, ALEXNET_ONE_TOWER_PARAMS),
    ("alexnet_owt", {}, TORCHVISION_PARAMS["alexnet"]),
    ("alexnet_d2l", {"num_classes": 10, "in_channels": 1}, D2L_ALEXNET_PARAMS),
    ("alexnet_d2l", {}, D2L_ALEXNET_PARAMS),  # d2l's nets default to 1 channel and 10 classes
    ("alexnet_28", {"num_classes": 10, "in_channels": 1}, D2L_ALEXNET_28_PARAMS),
    ("vgg16", {}, TORCHVISION_PARAMS["vgg16"]),
    ("vgg11_lrn", {}, 132_863_336),  # the paper's Table 2: 133 M for A and A-LRN alike (LRN has no weights)
    ("vgg16_c", {}, 133_638_952),  # Table 2: 134 M; D less three 3x3 convs made 1x1
    ("googlenet", {}, TORCHVISION_PARAMS["googlenet"]),
    ("googlenet", {"aux_logits": True}, 13_004_888),
    ("resnet18", {}, TORCHVISION_PARAMS["resnet18"]),
    ("resnet34", {}, TORCHVISION_PARAMS["resnet34"]),
    ("resnet50", {}, TORCHVISION_PARAMS["resnet50"]),
])
def test_parameter_counts(name, kwargs, expected):
    assert n_params(meta_model(name, **kwargs)) == expected


@pytest.mark.parametrize("name", ALL_MODELS)
def test_metadata_and_docstring_name_the_paper_and_deviations(name):
    info = model_info(name)
    assert info.name == name and info.family and 2012 <= info.year <= 2016
    assert info.deviations, f"{name} lists no deviations from its paper"
    module = classicnets.models.__name__ + "." + info.family.replace("-", "_")  # cuda-convnet's module
    module_doc = " ".join(sys.modules[module].__doc__.split())
    title = info.paper.split(": ", 1)[1].split(" (")[0].split(",")[0]  # "Authors: Title (as in ...)"
    assert title in module_doc
    assert "Deviation" in module_doc or "deviation" in module_doc
    # the metadata's minimum is the model's own, and the default size is valid
    model = meta_model(name)
    lo, hi = model.input_sizes
    assert info.min_input[1:] == (lo, lo)
    assert lo <= info.default_input[1] and (hi is None or info.default_input[1] <= hi)


def test_model_carries_info_for_its_channels():
    model = meta_model("alexnet_d2l", num_classes=10, in_channels=1)
    assert model.info.default_input == (1, 224, 224) and model.info.mean == (0.0,)
    model = meta_model("resnet18", in_channels=1)
    assert model.info.default_input == (1, 224, 224) and len(model.info.mean) == 1


def test_unknown_option_lists_the_accepted_ones():
    with pytest.raises(ModelOptionError) as error:
        classicnets.create_model("alexnet", tower=1)
    message = str(error.value)
    assert "tower" in message and "did you mean towers" in message
    for option in ("width_mult", "towers", "lrn", "overlap_pool", "dropout", "activation"):
        assert option in message


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="alexnet"):
        classicnets.create_model("alexnt")


@pytest.mark.parametrize(("name", "kwargs"), [
    ("alexnet", {"activation": "gelu"}),
    ("alexnet", {"dropout": 1.5}),
    ("alexnet", {"towers": 0}),
    ("alexnet", {"width_mult": 0}),
    ("vgg11", {"dropout": -0.1}),
    ("googlenet", {"branch3_kernel": 7}),
])
def test_bad_option_values_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        meta_model(name, **kwargs)


def test_activation_error_names_the_choices():
    with pytest.raises(ConfigError, match="relu, tanh"):
        meta_model("alexnet", activation="gelu")


# ---------------------------------------------------------------------------------------------------
# torchvision compatibility: keys and shapes equal the fixtures, and such a state_dict loads strictly

TORCHVISION = {  # fixture -> (our model, options)
    "alexnet": ("alexnet_owt", {}),
    **{n: (n, {}) for n in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
                            "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")},
    "googlenet": ("googlenet", {}),
    "googlenet_aux": ("googlenet", {"aux_logits": True}),
    **{n: (n, {}) for n in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")},
}


@pytest.mark.parametrize("fixture", sorted(TORCHVISION))
def test_state_dict_matches_torchvision(fixture):
    expected = json.loads((FIXTURES / f"{fixture}.json").read_text())
    name, kwargs = TORCHVISION[fixture]
    model = meta_model(name, **kwargs)
    ours = {key: list(value.shape) for key, value in model.state_dict().items()}
    assert ours == expected
    zeros = {key: torch.zeros(shape, device="meta") for key, shape in expected.items()}
    model.load_state_dict(zeros, strict=True, assign=True)


def test_torchvision_alexnet_state_dict_loads_on_cpu():
    expected = json.loads((FIXTURES / "alexnet.json").read_text())
    model = classicnets.create_model("alexnet_owt", width_mult=1.0)
    state = {key: torch.full(shape, 0.5) for key, shape in expected.items()}
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.features[0].weight, torch.full((64, 3, 11, 11), 0.5))


# ---------------------------------------------------------------------------------------------------
# Forward and backward sweeps


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shape_at_default_and_minimum_size(name):
    """Full width on the meta device: every layer's shape checked, for free."""
    default, smallest = side_sizes(name)
    for in_channels in (1, 3):
        full = meta_model(name, num_classes=10, in_channels=in_channels).eval()
        for side in (default, smallest):
            assert full(torch.empty(1, in_channels, side, side, device="meta")).shape == (1, 10)


@pytest.mark.parametrize("name", SWEEP)
def test_forward_values_at_default_and_minimum_size(name):
    """An eighth-width net (the same layers and sizes, ~1/64 of the work): finite outputs at the minimum
    size for 1 and 3 channels, and at the default size."""
    default, smallest = side_sizes(name)
    for in_channels in (1, 3):
        narrow = classicnets.create_model(name, num_classes=10, in_channels=in_channels, width_mult=0.125)
        for side in (default, smallest) if in_channels == 1 else (smallest,):
            with torch.no_grad():
                out = narrow.eval()(torch.randn(1, in_channels, side, side))
            assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_minimum_size_is_the_true_minimum(name):
    """One pixel less breaks the net itself, not only the check; for fixed-size nets one more does too."""
    model = classicnets.create_model(name, num_classes=10, in_channels=3, width_mult=0.125).eval()
    model.check_input = lambda x: None  # reach the layers themselves
    _, smallest = side_sizes(name)
    sizes = [smallest - 1] if smallest > 1 else []
    if name in FIXED_SIZE:
        sizes.append(FIXED_SIZE[name][1] + 1)
    for side in sizes:
        with torch.no_grad(), pytest.raises(RuntimeError):
            model(torch.randn(1, 3, side, side))


@pytest.mark.parametrize("name", SWEEP)
def test_backward_reaches_every_parameter(name):
    kwargs = {"aux_logits": True} if name == "googlenet" else {}
    model = classicnets.create_model(name, num_classes=10, in_channels=3, width_mult=0.125, **kwargs).train()
    _, smallest = side_sizes(name)
    side = smallest if name in FIXED_SIZE else max(smallest, 16)  # small, but more than 1x1 maps early on
    out = model(torch.randn(2, 3, side, side))
    outputs = out if isinstance(out, tuple) else (out,)
    assert len(outputs) == (3 if name == "googlenet" else 1)
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(("name", "side", "features_shape"), [
    ("alexnet", 227, (1, 256, 6, 6)),
    ("alexnet_owt", 224, (1, 256, 6, 6)),
    ("vgg16", 224, (1, 512, 7, 7)),
    ("nin", 224, (1, 384, 5, 5)),
    ("googlenet", 224, (1, 1024, 7, 7)),
    ("googlenet_d2l", 96, (1, 1024, 3, 3)),
    ("resnet18", 224, (1, 512, 7, 7)),
    ("resnet50", 224, (1, 2048, 7, 7)),
])
def test_forward_features_then_head_is_forward(name, side, features_shape):
    with torch.device("meta"):
        model = classicnets.create_model(name, num_classes=10, in_channels=3).eval()
        features = model.forward_features(torch.empty(1, 3, side, side))
        assert features.shape == features_shape
        assert model.forward_head(features).shape == (1, 10)
    narrow = classicnets.create_model(name, num_classes=10, in_channels=3, width_mult=0.125).eval()
    x = torch.randn(1, 3, *[side_sizes(name)[1]] * 2)
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), narrow.forward_head(narrow.forward_features(x)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt", "alexnet_d2l", "alexnet_28", "nin", "googlenet",
                                  "googlenet_d2l", "resnet50", "vgg11"])
def test_full_width_forward_at_default_size(name):
    """The real init at full width gives finite outputs (the deeper VGGs and ResNets share these blocks)."""
    model = classicnets.create_model(name, num_classes=10, in_channels=3).eval()
    side, _ = side_sizes(name)
    with torch.no_grad():
        out = model(torch.randn(1, 3, side, side))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("name", ALL_MODELS)
def test_bad_input_raises_input_shape_error_naming_the_expected_shape(name):
    model = meta_model(name, num_classes=10, in_channels=3)
    default, smallest = side_sizes(name)
    bad_inputs = [(1, 1, default, default), (3, default, default), (1, 3, default)]
    if smallest > 1:
        bad_inputs.append((1, 3, smallest - 1, smallest - 1))
        bad_inputs.append((1, 3, default, smallest - 1))
    if name in FIXED_SIZE:
        bad_inputs.append((1, 3, FIXED_SIZE[name][1] + 1, FIXED_SIZE[name][1] + 1))
    for shape in bad_inputs:
        with pytest.raises(InputShapeError) as error:
            model(torch.empty(shape, device="meta"))
        message = str(error.value)
        assert name in message and "(N, 3, H, W)" in message and str(shape) in message
        assert str(smallest) in message


def test_input_error_says_what_to_do():
    model = meta_model("alexnet_d2l", num_classes=10, in_channels=1)
    with pytest.raises(InputShapeError, match=r"193 <= H, W <= 224.*resize"):
        model(torch.empty(1, 1, 28, 28, device="meta"))
    with pytest.raises(InputShapeError, match="in_channels=3"):
        model(torch.empty(1, 3, 224, 224, device="meta"))
    with pytest.raises(InputShapeError, match="unsqueeze"):
        model(torch.empty(1, 224, 224, device="meta"))


def test_input_check_is_an_error_the_cli_prints(capsys):
    from classicnets.cli import main

    # a wrong input size reaches the user as one message and exit status 2, not a traceback
    assert main(["summary", "alexnet_d2l", "--input", "1,28,28"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("classicnets summary: error: alexnet_d2l") and "Traceback" not in err
    assert "193 <= H, W <= 224" in err and "resize the images" in err


# ---------------------------------------------------------------------------------------------------
# AlexNet: the paper's details and ablations


def layer_shapes(model: nn.Module, side: int) -> dict[str, tuple[int, ...]]:
    x = torch.empty(1, 1, side, side, device="meta")
    shapes = {}
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    x = torch.flatten(x, 1)
    shapes["flatten"] = tuple(x.shape[1:])
    for name, layer in model.classifier.named_children():
        x = layer(x)
        if name.startswith("fc"):
            shapes[name] = tuple(x.shape[1:])
    return shapes


# d2l's shapes (reference.py), the same for both variants from conv2 on
D2L_SHAPES_AFTER_POOL1 = {k: v for k, v in D2L_ALEXNET_SHAPES.items() if k not in ("conv1", "pool1")}


def test_alexnet_d2l_layer_shapes():
    model = meta_model("alexnet_d2l", num_classes=10, in_channels=1)
    shapes = layer_shapes(model, 224)
    assert shapes["conv1"] == (96, 54, 54) and shapes["pool1"] == (96, 26, 26)
    assert {k: shapes[k] for k in D2L_SHAPES_AFTER_POOL1} == D2L_SHAPES_AFTER_POOL1
    assert model.features.conv1.padding == (1, 1) and model.features.conv1.kernel_size == (11, 11)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())


def test_alexnet_28_layer_shapes():
    model = meta_model("alexnet_28", num_classes=10, in_channels=1)
    shapes = layer_shapes(model, 28)
    assert shapes["conv1"] == (96, 28, 28) and shapes["pool1"] == (96, 26, 26)
    assert {k: shapes[k] for k in D2L_SHAPES_AFTER_POOL1} == D2L_SHAPES_AFTER_POOL1
    conv1 = model.features.conv1
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((5, 5), (1, 1), (2, 2))
    assert model.features.pool1.stride == 1


def test_alexnet_paper_layer_shapes():
    model = meta_model("alexnet")
    x = torch.empty(1, 3, 227, 227, device="meta")
    shapes = {}
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["conv1"] == (96, 55, 55) and shapes["pool1"] == (96, 27, 27)
    assert shapes["conv2"] == (256, 27, 27) and shapes["pool2"] == (256, 13, 13)
    assert shapes["conv5"] == (256, 13, 13) and shapes["pool5"] == (256, 6, 6)
    assert model.classifier.fc6.in_features == 9216


def test_alexnet_lrn_has_the_papers_constants():
    model = meta_model("alexnet")
    names = list(dict(model.features.named_children()))
    assert names.index("norm1") == names.index("relu1") + 1
    assert names.index("pool1") == names.index("norm1") + 1
    assert names.index("norm2") == names.index("relu2") + 1
    norms = [m for m in model.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(norms) == 2
    for lrn in norms:  # torch divides alpha by size: 5e-4 / 5 = the paper's 1e-4
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 5e-4, 0.75, 2.0)


def test_lrn_module_computes_the_papers_formula():
    from classicnets.models.lrn import paper_lrn

    a = torch.rand(1, 7, 2, 2)
    b = paper_lrn()(a)
    # b_i = a_i / (k + alpha * sum_{j=i-2}^{i+2} a_j^2)^beta, k=2, alpha=1e-4, beta=0.75
    squares = torch.nn.functional.pad(a.square(), (0, 0, 0, 0, 2, 2))
    window = sum(squares[:, j:j + 7] for j in range(5))
    torch.testing.assert_close(b, a / (2 + 1e-4 * window) ** 0.75)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_lrn_forward_and_gradient_equal_torchs_composite(layout):
    """The written-out LRN against torch's (avg_pool3d-based) one in float64, and gradcheck's numerical
    Jacobian; the output keeps the input's memory layout."""
    from classicnets.models.lrn import paper_lrn

    a = (torch.randn(2, 9, 4, 3, dtype=torch.float64) * 30).contiguous(memory_format=layout)
    ours, theirs = a.clone().requires_grad_(), a.clone().requires_grad_()
    found = paper_lrn()(ours)
    expected = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(theirs)
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-12)
    assert found.is_contiguous(memory_format=layout)
    upstream = torch.randn_like(found)
    found.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(paper_lrn(groups=3), (a[:, :, :2, :2].clone().requires_grad_(),))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # torch.func scripts a helper
def test_lrn_second_derivatives_and_torch_func():
    """The written-out gradient is itself differentiable (create_graph), forward mode works, and so do
    torch.func's transforms."""
    from classicnets.models.lrn import paper_lrn

    lrn = paper_lrn(groups=2)
    a = (torch.randn(2, 8, 2, 2, dtype=torch.float64) * 20).requires_grad_()
    assert torch.autograd.gradgradcheck(lrn, (a,))
    assert torch.autograd.gradcheck(lrn, (a,), check_forward_ad=True)  # the jvp

    def reference(x):
        return torch.cat([nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(p) for p in x.chunk(2, 1)], 1)

    per_sample = torch.func.vmap(torch.func.grad(lambda x: lrn(x[None]).square().sum()))(a.detach())
    expected = torch.func.vmap(torch.func.grad(lambda x: reference(x[None]).square().sum()))(a.detach())
    torch.testing.assert_close(per_sample, expected, rtol=1e-10, atol=1e-12)
    one = a.detach()[:1, :, :1, :1]
    torch.testing.assert_close(torch.func.hessian(lambda x: lrn(x).square().sum())(one),
                               torch.func.hessian(lambda x: reference(x).square().sum())(one))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_paper_alexnet_exports_to_torchscript():
    """Tracing runs the LRN as plain ops (TorchScript cannot hold its autograd.Function)."""
    model = classicnets.create_model("alexnet", num_classes=10, in_channels=1, width_mult=0.0625).eval()
    x = torch.rand(2, 1, 227, 227)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model, x), buffer)
    buffer.seek(0)
    with torch.inference_mode():
        torch.testing.assert_close(torch.jit.load(buffer)(x), model(x))


def test_grouped_lrn_is_one_lrn_per_group_of_maps():
    from classicnets.models.lrn import paper_lrn

    a = torch.rand(2, 12, 3, 3, dtype=torch.float64) * 40
    per_group = torch.cat([paper_lrn()(part) for part in a.chunk(3, dim=1)], dim=1)
    torch.testing.assert_close(paper_lrn(groups=3)(a), per_group, rtol=1e-12, atol=1e-12)
    with pytest.raises(InputShapeError, match="multiple of 3"):
        paper_lrn(groups=3)(torch.rand(1, 10, 3, 3))
    with pytest.raises(ConfigError, match="odd number of maps"):
        paper_lrn(size=4)
    with pytest.raises(ConfigError, match="groups must be a positive integer"):
        paper_lrn(groups=0)


@pytest.mark.parametrize("autocast", [False, True])
def test_lrn_keeps_its_normaliser_out_of_bf16(autocast):
    """In bf16, k + alpha * sum(a^2) = 2 + ~0.1 would round to 2 + 1/64 steps; the LRN works in fp32 and
    gives the fp32 result rounded once (the sum of squares alone would lose the normalisation)."""
    from classicnets.models.lrn import paper_lrn

    a = (torch.randn(2, 16, 5, 5, generator=torch.Generator().manual_seed(0)) * 20).bfloat16().double()
    expected = paper_lrn()(a)  # the same (bf16-representable) input, in float64
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        found = paper_lrn()(a.bfloat16())
    assert found.dtype == torch.bfloat16
    torch.testing.assert_close(found.double(), expected, rtol=2**-8, atol=1e-6)  # the output's rounding
    constant_scale = a / 2**0.75  # what a normaliser rounded to 2 gives
    assert (expected - constant_scale).abs().max() > 0.05 * constant_scale.abs().max()


def test_alexnet_towers_are_grouped_convolutions():
    model = meta_model("alexnet")
    groups = {name: m.groups for name, m in model.features.named_children() if isinstance(m, nn.Conv2d)}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert set(model.TOWER_CONVS) == {n for n, g in groups.items() if g == 2}
    assert model.features.conv2.weight.shape == (256, 48, 5, 5)  # each tower sees its own 48 maps
    one = meta_model("alexnet", towers=1)
    assert all(m.groups == 1 for m in one.modules() if isinstance(m, nn.Conv2d))


def test_alexnet_paper_init():
    model = classicnets.create_model("alexnet")
    layers = {**dict(model.features.named_children()), **dict(model.classifier.named_children())}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        weight = layers[name].weight
        assert abs(weight.std().item() - 0.01) < 0.0005, name
        assert abs(weight.mean().item()) < 0.001, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(layers[name].bias, torch.full_like(layers[name].bias, expected_bias)), name


def test_d2l_alexnet_uses_xavier_uniform_init():
    model = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    fc6 = model.classifier.fc6.weight  # fan_in 6400, fan_out 4096
    bound = math.sqrt(6 / (6400 + 4096))
    assert fc6.abs().max().item() <= bound * (1 + 1e-6)  # float32 rounding at the edge
    assert abs(fc6.std().item() - bound / math.sqrt(3)) < 0.01 * bound


def test_alexnet_ablations_change_the_net():
    no_lrn = meta_model("alexnet", lrn=False)
    assert not any(isinstance(m, nn.LocalResponseNorm) for m in no_lrn.modules())
    assert n_params(no_lrn) == ALEXNET_PAPER_PARAMS  # LRN has no parameters

    plain_pools = classicnets.create_model("alexnet", overlap_pool=False, width_mult=0.125).eval()
    pools = [m for m in plain_pools.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and all((p.kernel_size, p.stride) == (2, 2) for p in pools)
    with torch.no_grad():
        assert plain_pools(torch.randn(1, 3, 227, 227)).shape == (1, 1000)
    overlapping = meta_model("alexnet")
    pools = [m for m in overlapping.modules() if isinstance(m, nn.MaxPool2d)]
    assert all((p.kernel_size, p.stride) == (3, 2) for p in pools)

    dropouts = [m.p for m in meta_model("alexnet", dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert dropouts == [0.3, 0.3]
    assert [m.p for m in meta_model("alexnet").modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]

    tanh = meta_model("alexnet", activation="tanh")
    assert sum(isinstance(m, nn.Tanh) for m in tanh.modules()) == 7
    assert not any(isinstance(m, nn.ReLU) for m in tanh.modules())


def test_alexnet_owt_layout_is_torchvisions():
    model = meta_model("alexnet_owt")
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    assert convs == [0, 3, 6, 8, 10] and linears == [1, 4, 6]
    assert isinstance(model.classifier[0], nn.Dropout) and isinstance(model.classifier[3], nn.Dropout)
    assert model.avgpool.output_size == 6


# ---------------------------------------------------------------------------------------------------
# width_mult and the other families' details


def test_width_mult_shrinks_channels_and_alexnet_fc_widths():
    half = meta_model("alexnet", width_mult=0.5)
    assert half.features.conv1.out_channels == 48 and half.classifier.fc6.out_features == 2048
    assert half.classifier.fc6.in_features == 128 * 6 * 6
    assert n_params(half) < n_params(meta_model("alexnet")) / 3
    odd = meta_model("alexnet", width_mult=0.3)  # tower convs stay divisible by the two towers
    assert all(m.out_channels % 2 == 0 for m in odd.modules() if isinstance(m, nn.Conv2d) and m.groups == 2)
    assert meta_model("resnet18", width_mult=0.5).fc.in_features == 256
    assert meta_model("vgg11", width_mult=0.25).features[0].out_channels == 16
    assert meta_model("googlenet", width_mult=0.5).conv1.conv.out_channels == 32
    assert meta_model("nin", width_mult=0.5).features[0][0].out_channels == 48
    d2l = meta_model("alexnet_d2l", num_classes=10, in_channels=1, width_mult=0.25)
    assert d2l.classifier.fc6.in_features == 64 * 5 * 5 and d2l.classifier.fc6.out_features == 1024


def test_vgg_configs_are_the_papers_table():
    from classicnets.models.vgg import CONFIGS

    conv_counts = {k: sum(v not in ("M", "LRN") for v in cfg) for k, cfg in CONFIGS.items()}
    # + 3 fc = 11, 11, 13, 16, 16, 19 weight layers
    assert conv_counts == {"A": 8, "A-LRN": 8, "B": 10, "C": 13, "D": 13, "E": 16}
    for name, convs in [("vgg11", 8), ("vgg16", 13), ("vgg19_bn", 16)]:
        model = meta_model(name)
        assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (convs if "bn" in name else 0)


def test_vgg_a_lrn_and_c_put_the_lrn_and_the_1x1_convs_where_table_1_does():
    lrn = meta_model("vgg11_lrn").features
    assert [type(m).__name__ for m in lrn[:4]] == ["Conv2d", "ReLU", "PaperLRN", "MaxPool2d"]
    assert (lrn[2].size, lrn[2].alpha, lrn[2].beta, lrn[2].k) == (5, 5e-4, 0.75, 2.0)  # AlexNet's constants
    kernels = [m.kernel_size[0] for m in meta_model("vgg16_c").features if isinstance(m, nn.Conv2d)]
    assert kernels == [3, 3, 3, 3, 3, 3, 1, 3, 3, 1, 3, 3, 1]  # conv1-256, conv1-512, conv1-512
    model = classicnets.create_model("vgg16_c", width_mult=0.0625, num_classes=10, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


def test_googlenet_has_nine_inception_blocks_and_optional_aux_heads():
    from classicnets.models.googlenet import Inception

    model = classicnets.create_model("googlenet", num_classes=10, width_mult=0.125, aux_logits=True)
    assert sum(isinstance(m, Inception) for m in model.modules()) == 9
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in out] == [(2, 10)] * 3 and out.logits is out[0]
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert meta_model("googlenet").aux1 is None
    assert meta_model("googlenet").inception3a.branch3[1].conv.kernel_size == (3, 3)  # torchvision's
    assert meta_model("googlenet", branch3_kernel=5).inception3a.branch3[1].conv.kernel_size == (5, 5)
    bn = meta_model("googlenet").conv1.bn
    assert bn.eps == 0.001 and not meta_model("googlenet").conv1.conv.bias


def test_googlenet_d2l_has_no_batchnorm_and_trains_at_96():
    model = meta_model("googlenet_d2l", num_classes=10, in_channels=1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model_info("googlenet_d2l").default_input == (1, 96, 96)
    assert model.features[2][0].branch3[1].conv.kernel_size == (5, 5)


@pytest.mark.parametrize(("name", "projections", "blocks"), [
    ("resnet18", 3, 8), ("resnet34", 3, 16), ("resnet50", 4, 16), ("resnet101", 4, 33), ("resnet152", 4, 50),
])
def test_resnet_projects_only_where_the_shape_changes(name, projections, blocks):
    from classicnets.models.resnet import BasicBlock, Bottleneck

    model = meta_model(name)
    all_blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(all_blocks) == blocks
    projected = [b for b in all_blocks if b.downsample is not None]
    assert len(projected) == projections  # the first block of each stage that changes channels or resolution
    for block in projected:
        first_conv = block.conv1
        assert block.downsample[0].in_channels == first_conv.in_channels


def test_resnet_zero_init_residual():
    model = classicnets.create_model("resnet18", width_mult=0.25, zero_init_residual=True)
    assert all(torch.count_nonzero(layer[0].bn2.weight) == 0 for layer in (model.layer1, model.layer4))


def test_nin_has_no_fully_connected_layers():
    model = meta_model("nin", num_classes=10, in_channels=1)
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    assert model.head[1][0].out_channels == 10  # one map per class, then global average pooling


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_models_table_lists_the_zoo():
    from classicnets.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models", "--format", "json"]) == 0
    rows = {row["name"]: row for row in json.loads(out.getvalue())}
    assert sorted(rows) == sorted(ALL_MODELS)
    assert rows["alexnet"]["parameters"] == ALEXNET_PAPER_PARAMS
    assert rows["alexnet"]["default_input"] == "3x227x227"
    assert rows["vgg16"]["parameters"] == TORCHVISION_PARAMS["vgg16"]
    assert rows["alexnet_d2l"]["default_input"] == "1x224x224"
    assert rows["alexnet_d2l"]["parameters"] == D2L_ALEXNET_PARAMS  # d2l's nets: 1 channel, 10 classes

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models", "alexnet*"]) == 0
    text = out.getvalue()
    assert "60,965,224" in text and "61,100,840" in text and "resnet18" not in text


@pytest.mark.parametrize("columns", [80, 120])
def test_cli_models_table_fits_the_terminal_with_every_name_whole(columns, monkeypatch):
    from classicnets.cli import main

    monkeypatch.setenv("COLUMNS", str(columns))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["models"]) == 0
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= columns
    names = {line.split()[0] for line in lines if line.split()}
    assert set(ALL_MODELS) <= names and any("132,863,336" in line for line in lines)
