"""The inspector: hand-computed rows, FlopCounterMode agreement on the zoo, attribution, memory, renderers,
the CLI."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import classicnets
from classicnets.cli import main
from classicnets.errors import ConfigError, InputShapeError
from classicnets.inspect import summarize
from classicnets.inspect.fastmeta import fast_meta_outputs
from classicnets.inspect.summary import meta_copy
from reference import ALEXNET_ONE_TOWER_PARAMS, ALEXNET_PAPER_PARAMS, D2L_ALEXNET_PARAMS, D2L_ALEXNET_SHAPES

aten = torch.ops.aten


def rows_by_name(summary):
    return {row.name: row for row in summary.rows}


def meta_model(name: str, **options) -> nn.Module:
    """A zoo model on the meta device: the inspector needs shapes only; VGG's init would cost seconds."""
    with torch.device("meta"):
        return classicnets.create_model(name, **options)


@pytest.fixture(scope="module")
def d2l_summary():
    model = meta_model("alexnet_d2l", num_classes=10, in_channels=1)
    return summarize(model, input_size=(1, 224, 224), depth=None)


# ------------------------------------------------------------------------------------------------
# Hand-computed rows


# name: (output C, H=W, input C, kernel) for d2l's AlexNet at 1x224x224 (output shapes: reference.py)
D2L_CONVS = {
    f"features.{name}": (*D2L_ALEXNET_SHAPES[name][:2], c_in, k)
    for name, c_in, k in (("conv1", 1, 11), ("conv2", 96, 5), ("conv3", 256, 3), ("conv4", 384, 3),
                          ("conv5", 384, 3))
}
D2L_FCS = {"classifier.fc6": (6400, 4096), "classifier.fc7": (4096, 4096), "classifier.fc8": (4096, 10)}


def test_alexnet_d2l_conv1_row(d2l_summary):
    conv1 = rows_by_name(d2l_summary)["features.conv1"]
    assert conv1.output_shape == [1, 96, 54, 54]
    assert conv1.params == 11_712 and conv1.params_trainable == 11_712 and conv1.params_frozen == 0
    assert conv1.macs == 54 * 54 * 96 * 121 == 33_872_256
    assert conv1.flops == 2 * conv1.macs
    assert conv1.backward_flops == 2 * conv1.macs  # grad-weight only: the image needs no gradient
    assert conv1.activation_bytes == 224 * 224 * 4  # conv1 keeps its input for grad-weight


def test_alexnet_d2l_every_conv_and_fc_row(d2l_summary):
    rows = rows_by_name(d2l_summary)
    for name, (c_out, side, c_in, k) in D2L_CONVS.items():
        row = rows[name]
        assert row.output_shape == [1, c_out, side, side], name
        assert row.params == c_out * c_in * k * k + c_out, name
        assert row.macs == side * side * c_out * c_in * k * k, name
        if name != "features.conv1":
            assert row.backward_flops == 2 * row.flops, name  # grad-input and grad-weight
    for name, (n_in, n_out) in D2L_FCS.items():
        row = rows[name]
        assert row.output_shape == [1, n_out]
        assert row.params == n_in * n_out + n_out
        assert row.macs == n_in * n_out
        assert row.backward_flops == 2 * row.flops
    totals = d2l_summary.totals
    assert totals.params == D2L_ALEXNET_PARAMS
    assert totals.flops == 2 * totals.macs == 2 * sum(r.macs for r in rows.values())
    assert totals.most_params_layer == "classifier.fc6"
    assert totals.most_flops_layer == "features.conv2"
    assert rows["features.pool1"].output_shape == [1, 96, 26, 26]
    assert rows["features.pool5"].output_shape == [1, 256, 5, 5]


def test_other_ops_follow_the_stated_convention(d2l_summary):
    rows = rows_by_name(d2l_summary)
    assert rows["features.relu1"].other_ops == 96 * 54 * 54  # 1 per element
    assert rows["features.pool1"].other_ops == 96 * 26 * 26 * 9  # window 3x3 per output element
    assert rows["features.relu1"].flops == rows["features.pool1"].flops == 0


def test_shares_add_up(d2l_summary):
    assert sum(r.flops_share for r in d2l_summary.rows) == pytest.approx(1.0)
    assert sum(r.params_share for r in d2l_summary.rows) == pytest.approx(1.0)
    fc6 = rows_by_name(d2l_summary)["classifier.fc6"]
    assert fc6.params_share == pytest.approx(26_218_496 / D2L_ALEXNET_PARAMS)


# ------------------------------------------------------------------------------------------------
# Grouped convolutions: AlexNet's towers


def test_alexnet_towers_halve_grouped_conv_counts():
    two = rows_by_name(summarize(meta_model("alexnet", towers=2), depth=None))
    one = rows_by_name(summarize(meta_model("alexnet", towers=1), depth=None))
    for name in ("features.conv2", "features.conv4", "features.conv5"):
        assert 2 * two[name].macs == one[name].macs, name
        bias = two[name].output_shape[1]
        assert two[name].params - bias == (one[name].params - bias) // 2
        assert two[name].backward_flops == 2 * two[name].flops  # exact, though FlopCounterMode says 3x
    assert two["features.conv2"].macs == 27 * 27 * 256 * 48 * 25
    assert two["features.conv3"].macs == one["features.conv3"].macs  # conv3 crosses the towers
    assert sum(r.params for r in two.values()) == ALEXNET_PAPER_PARAMS
    assert sum(r.params for r in one.values()) == ALEXNET_ONE_TOWER_PARAMS


# ------------------------------------------------------------------------------------------------
# FlopCounterMode agreement on the whole zoo


def flop_counter_totals(model: nn.Module, input_size, backward: bool) -> tuple[int, int]:
    twin = meta_copy(model, torch.float32).train()
    example = torch.empty((1, *input_size), device="meta")
    with FlopCounterMode(display=False) as forward_counter:
        output = twin(example)
    if not backward:
        return forward_counter.get_total_flops(), 0
    with FlopCounterMode(display=False) as backward_counter:
        output.sum().backward()
    return forward_counter.get_total_flops(), backward_counter.get_total_flops()


@pytest.mark.parametrize("name", classicnets.list_models())
def test_forward_flops_equal_flop_counter_mode(name):
    model = meta_model(name)
    summary = summarize(model)
    forward, _ = flop_counter_totals(model, model.info.default_input, backward=False)
    assert summary.totals.flops == forward > 0
    assert summary.totals.flops == sum(r.flops for r in summary.rows)


@pytest.mark.parametrize("name", ["alexnet_d2l", "resnet18", "googlenet_d2l", "nin"])
def test_backward_flops_equal_flop_counter_mode_without_groups(name):
    model = meta_model(name, in_channels=1)
    summary = summarize(model)
    _, backward = flop_counter_totals(model, model.info.default_input, backward=True)
    assert summary.totals.backward_flops == backward > summary.totals.flops


# ------------------------------------------------------------------------------------------------
# Attribution: nesting, functional calls, shared modules


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) * 2


class Outer(nn.Module):
    """A nested module, a functional matmul in its own forward, and a shared block called twice."""

    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.shared = nn.Linear(8, 8)
        self.head_weight = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        x = self.inner(x)
        x = self.shared(torch.relu(self.shared(x)))
        return F.linear(x, self.head_weight)  # functional: belongs to Outer itself


@pytest.fixture
def outer_summary():
    return summarize(Outer(), input_size=(8,), batch_size=4, depth=None)


def test_nested_modules_are_not_double_counted(outer_summary):
    rows = rows_by_name(outer_summary)
    assert rows["inner.fc"].macs == 4 * 8 * 8
    assert rows["inner"].macs == 0  # its own work is the x2 only
    assert rows["inner"].other_ops == 4 * 8
    totals = outer_summary.totals
    assert totals.macs == 4 * 8 * 8 * 3 + 4 * 8 * 3
    assert totals.params == (8 * 8 + 8) * 2 + 3 * 8
    for depth in (0, 1, 2, None):
        rows = summarize(Outer(), input_size=(8,), batch_size=4, depth=depth).rows
        assert sum(r.flops for r in rows) == totals.flops, depth
        assert sum(r.params for r in rows) == totals.params, depth
        assert sum(r.activation_bytes for r in rows) == totals.activation_bytes, depth


def test_functional_call_goes_to_the_module_running(outer_summary):
    root = rows_by_name(outer_summary)[""]
    assert root.type == "Outer"
    assert root.macs == 4 * 8 * 3 and root.params == 3 * 8


def test_shared_module_is_counted_per_call(outer_summary):
    shared = rows_by_name(outer_summary)["shared"]
    assert shared.calls == 2
    assert shared.macs == 2 * 4 * 8 * 8
    assert shared.params == 8 * 8 + 8  # its parameters once
    assert shared.backward_flops == 2 * shared.flops


def test_parallel_branches_keep_their_own_backward_flops():
    """GoogLeNet's Inception branches all read one tensor; each conv still gets its own backward FLOPs:
    grad-input and grad-weight, twice its forward (the first conv, on the image, grad-weight only).
    ModuleTracker's gradient hooks charged about half of them to another module."""
    rows = summarize(meta_model("googlenet_d2l", in_channels=1), depth=None).rows
    convs = [r for r in rows if r.type == "Conv2d"]
    assert len(convs) == 57
    assert convs[0].backward_flops == convs[0].flops > 0
    assert [r.name for r in convs[1:] if r.backward_flops != 2 * r.flops] == []


class ReadsStash(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x) + self.stash  # a tensor its parent made, not among its arguments


@dataclass
class Wrapped:
    value: torch.Tensor


class WrapsOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return Wrapped(self.fc(x))  # an output the module hooks cannot look into


class UnusualCalls(nn.Module):
    """A child called by keyword, one handed a tensor through an attribute, one returning an object."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.c, self.d = ReadsStash(), WrapsOutput()

    def forward(self, x):
        h = self.a(x) @ torch.ones(8, 8)  # the matmul is the parent's own; the constant needs no gradient
        h = self.b(input=h)
        self.c.stash = h * 2
        return self.d(self.c(h)).value


def test_nodes_go_to_the_module_that_made_them_however_it_is_called():
    rows = rows_by_name(summarize(UnusualCalls(), input_size=(8,), batch_size=4, depth=None))
    assert rows[""].flops == 2 * 4 * 8 * 8 and rows[""].backward_flops == rows[""].flops  # grad-input only
    assert rows["a"].backward_flops == rows["a"].flops  # grad-weight only: the image needs no gradient
    for name in ("b", "c.fc", "d.fc"):
        assert rows[name].backward_flops == 2 * rows[name].flops > 0, name


def test_depth_folds_submodules():
    model = meta_model("resnet18", num_classes=10)
    full = summarize(model, depth=None)
    folded = summarize(model, depth=1)
    assert {r.depth for r in folded.rows} == {0, 1}
    layer1 = rows_by_name(folded)["layer1"]
    assert layer1.folded
    inside = [r for r in full.rows if r.name.startswith("layer1.")]
    assert layer1.flops == sum(r.flops for r in inside) + rows_by_name(full)["layer1"].flops
    assert layer1.params == sum(r.params for r in inside)


class ReadsValues(nn.Module):
    """A forward that meta tensors cannot run: it reads a value and keeps a plain CPU tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.scale = torch.full((8,), 2.0)  # an attribute, not a buffer: stays on the CPU

    def forward(self, x):
        if x.abs().sum().item() >= 0:
            x = x * self.scale
        return self.fc(x)


def test_forward_that_meta_cannot_run_is_counted_on_the_cpu():
    model = ReadsValues()
    rows = rows_by_name(summarize(model, input_size=(8,), batch_size=4, depth=None))
    assert rows["fc"].macs == 4 * 8 * 8 and rows[""].other_ops >= 4 * 8
    assert rows["fc"].backward_flops == rows["fc"].flops  # its weight's gradient; the input needs none
    assert model.fc.weight.grad is None


# ------------------------------------------------------------------------------------------------
# Activation memory, by hand


def test_saved_activation_bytes_by_hand():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    rows = summarize(model, input_size=(8,), batch_size=2, depth=None).rows
    saved = {r.name: r.activation_bytes for r in rows}
    # Linear 0 computes the gradient of its weight only, Linear 2 those of its weight and its input
    assert [r.backward_flops for r in rows] == [0, 2 * 2 * 8 * 16, 0, 2 * (2 * 2 * 16 * 4)]
    # Linear 0 keeps its input for grad-weight (2x8 floats), not its weight (a parameter);
    # ReLU keeps its output (2x16); Linear 2 keeps that same tensor, counted once, at the ReLU.
    assert saved == {"": 0, "0": 2 * 8 * 4, "1": 2 * 16 * 4, "2": 0}
    half = summarize(model, input_size=(8,), batch_size=2, dtype="bfloat16").totals
    assert half.activation_bytes == (2 * 8 + 2 * 16) * 2
    assert half.param_bytes == (8 * 16 + 16 + 16 * 4 + 4) * 2


def test_frozen_parameters_need_no_gradients():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].requires_grad_(False)
    summary = summarize(model, input_size=(8,), batch_size=2, depth=None)
    rows = rows_by_name(summary)
    assert rows["0"].params_frozen == 8 * 16 + 16 and rows["0"].backward_flops == 0
    assert rows["0"].activation_bytes == 0  # nothing to keep: no gradient flows into Linear 0
    totals = summary.totals
    assert totals.gradient_bytes == (16 * 4 + 4) * 4
    assert totals.optimizer_state_bytes["sgd_momentum"] == totals.gradient_bytes
    assert totals.optimizer_state_bytes["adam"] == 2 * totals.gradient_bytes + 4 * 2  # + a float32 step each


# ------------------------------------------------------------------------------------------------
# The model is left as it was


def model_state(model: nn.Module) -> dict:
    return {
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
        "attributes": {k: sorted(vars(m)) for k, m in model.named_modules()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["tensors"].keys() == after["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(value, after["tensors"][key]), key
    for key, grad in before["grads"].items():
        assert (grad is None and after["grads"][key] is None) or torch.equal(grad, after["grads"][key]), key
    for field in ("requires_grad", "training", "hooks", "attributes"):
        assert before[field] == after[field], field


def global_hook_counts() -> tuple[int, int]:
    module = torch.nn.modules.module
    return len(module._global_forward_hooks), len(module._global_forward_pre_hooks)


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5),
                         nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)), nn.Flatten(),
                         nn.Linear(8 * 8 * 8, 10))


@pytest.mark.parametrize("build, measure", [
    (lambda: classicnets.create_model("resnet18", num_classes=10, width_mult=0.125), False),
    (small_cnn, True),
])
def test_inspecting_leaves_the_model_unchanged(build, measure):
    model = build()
    some_block = model[4] if isinstance(model, nn.Sequential) else model.layer1
    some_block.eval()
    next(model.parameters()).requires_grad_(False)
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # some gradients and BN statistics to keep
    before, global_hooks, rng = model_state(model), global_hook_counts(), torch.get_rng_state()
    summarize(model, input_size=(3, 8, 8), batch_size=2, measure=measure, repeats=1)
    assert_same_state(before, model_state(model))
    assert torch.equal(rng, torch.get_rng_state())  # the random input and dropout masks came from a fork
    assert global_hooks == global_hook_counts()


# ------------------------------------------------------------------------------------------------
# Fast meta outputs match PyTorch's meta kernels


def _layouts(value):
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, (tuple, list)):
        return [_layouts(v) for v in value]
    return value


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_meta_outputs_match_the_meta_kernels(dtype, channels_last):
    def meta(*shape, dt=dtype):
        t = torch.empty(*shape, device="meta", dtype=dt)
        return t.to(memory_format=torch.channels_last) if channels_last and len(shape) == 4 else t

    x, grad, weight, stats = meta(2, 8, 5, 5), meta(2, 8, 5, 5), meta(8), meta(8, dt=torch.float32)
    out = aten.native_batch_norm(x, weight, weight, stats, stats, True, 0.1, 1e-5)
    cases = [
        (aten.relu.default, (x,)),
        (aten.threshold_backward.default, (grad, x, 0)),
        (aten.native_batch_norm.default, (x, weight, weight, stats, stats, True, 0.1, 1e-5)),
        (aten.native_batch_norm_backward.default,
         (grad, x, weight, stats, stats, out[1], out[2], True, 1e-5, [True, True, True])),
        (aten.native_batch_norm_backward.default,
         (grad, x, weight, stats, stats, out[1], out[2], True, 1e-5, [True, False, False])),
    ]
    for func, args in cases:
        fast = fast_meta_outputs(func, args, {})
        assert fast is not None, func
        assert _layouts(fast) == _layouts(func(*args)), func


# ------------------------------------------------------------------------------------------------
# Renderers


def test_json_round_trip(d2l_summary):
    data = json.loads(d2l_summary.render("json"))
    assert data["model"] == "alexnet_d2l" and data["input_size"] == [1, 224, 224]
    assert data["totals"]["params"] == D2L_ALEXNET_PARAMS
    assert data["totals"]["flops"] == d2l_summary.totals.flops
    assert [r["name"] for r in data["rows"]] == [r.name for r in d2l_summary.rows]
    conv1 = next(r for r in data["rows"] if r["name"] == "features.conv1")
    assert conv1["macs"] == 33_872_256 and conv1["output_shape"] == [1, 96, 54, 54]
    assert "FLOPs = 2 x MACs" in data["convention"]


def test_csv_round_trip(d2l_summary):
    records = list(csv.DictReader(io.StringIO(d2l_summary.render("csv"))))
    assert len(records) == len(d2l_summary.rows)
    for record, row in zip(records, d2l_summary.rows, strict=True):
        assert record["name"] == row.name
        assert int(record["macs"]) == row.macs and int(record["params"]) == row.params
        assert int(record["activation_bytes"]) == row.activation_bytes
    assert next(r for r in records if r["name"] == "features.conv1")["output_shape"] == "1x96x54x54"


def test_markdown_and_table(d2l_summary):
    markdown = d2l_summary.render("markdown")
    lines = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert len(lines) == len(d2l_summary.rows)
    assert "| `features.conv1` | Conv2d | 1x96x54x54 | 11,712 |" in markdown
    table = d2l_summary.render("table", width=200)
    assert "conv1" in table and "33.87M" in table and "most compute" in table
    assert "features.conv2 (Conv2d)" in table and "FLOPs = 2 x MACs" in table
    with pytest.raises(ConfigError, match="format must be one of"):
        d2l_summary.render("yaml")


def test_the_default_table_fits_80_columns_and_shows_each_part_s_totals():
    from classicnets import create_model, summarize

    with torch.device("meta"):
        model = create_model("alexnet_d2l")
    table = summarize(model).render("table", width=80)  # the CLI's default depth
    assert max(map(len, table.splitlines())) <= 80
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    # which part holds the parameters and which the compute reads off the parts' rows, whole numbers kept
    assert "[3,723,968]" in rows["features"] and "[43,040,778]" in rows["classifier"]
    assert "[1.79G]" in rows["features"] and "[86.07M]" in rows["classifier"]
    assert "conv2" in rows and "params" in table and "FLOPs" in table
    assert "(+)" not in table  # nothing is folded at this depth, so no footnote for it
    folded = summarize(model, depth=1).render("table", width=80)
    assert "features (+)" in folded and "(+) holds its submodules" in folded


# ------------------------------------------------------------------------------------------------
# Errors


def test_wrong_channels_name_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(InputShapeError, match=r"layer '0' \(Conv2d\).*\(2, 1, 8, 8\)"):
        summarize(model, input_size=(1, 8, 8), batch_size=2)


def test_wrong_size_names_the_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(InputShapeError, match=r"layer '2' \(Linear\).*\(1, 196\)"):
        summarize(model, input_size=(3, 9, 9))


def test_zoo_model_input_error_carries_its_advice():
    model = meta_model("alexnet")
    with pytest.raises(InputShapeError, match=r"alexnet failed in the model's own forward.*227 <= H, W"):
        summarize(model, input_size=(3, 100, 100))
    model = meta_model("alexnet_owt")
    with pytest.raises(InputShapeError, match=r"alexnet_owt failed.*in_channels=1"):
        summarize(model, input_size=(1, 224, 224))


def test_bad_arguments():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="input_size is required"):
        summarize(model)
    with pytest.raises(ConfigError, match="batch_size"):
        summarize(model, input_size=(2,), batch_size=0)
    with pytest.raises(ConfigError, match="dtype"):
        summarize(model, input_size=(2,), dtype="int8")
    with pytest.raises(ConfigError, match="real weights"):
        summarize(meta_model("nin"), measure=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no GPU here"):  # runtime.resolve_device's message
            summarize(model, input_size=(2,), measure=True, device="cuda")


# ------------------------------------------------------------------------------------------------
# --measure


def test_measure_on_a_small_model():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 16 * 16, 10))
    summary = summarize(model, input_size=(3, 16, 16), batch_size=8, measure=True, repeats=3, depth=None)
    measured, totals = summary.measurement, summary.totals
    assert measured.device == "cpu" and measured.repeats == 3 and measured.optimizer == "sgd_momentum"
    # weights, gradients and momentum are all alive in the step; activations come and go
    floor = totals.param_bytes + totals.gradient_bytes + totals.optimizer_state_bytes["sgd_momentum"]
    assert floor < measured.peak_bytes <= totals.peak_train_bytes["sgd_momentum"] * 1.2
    assert measured.forward_ms > 0 and measured.backward_ms > 0
    for row in summary.rows[1:]:
        assert row.forward_ms is not None and row.forward_ms >= 0, row.name
    assert rows_by_name(summary)["0"].backward_ms > 0
    assert "measured peak memory" in summary.render("table")


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_json(capsys):
    assert main(["summary", "alexnet_d2l", "--num-classes", "10", "--format", "json", "--depth", "all"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_size"] == [1, 224, 224]  # the model's default input, 1 channel
    assert data["totals"]["params"] == D2L_ALEXNET_PARAMS
    assert data["totals"]["macs"] == 938_146_176


def test_cli_options_and_batch(capsys):
    args = ["summary", "alexnet_d2l", "--num-classes", "10", "--option", "width_mult=0.5",
            "--batch-size", "4", "--format", "json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch_size"] == 4 and data["totals"]["params"] < D2L_ALEXNET_PARAMS // 2


def test_cli_compares_models(capsys):
    assert main(["summary", "alexnet_d2l", "alexnet_28", "--format", "csv"]) == 0
    records = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in records] == ["alexnet_d2l", "alexnet_28"]
    assert records[1]["input_size"] == "1x28x28"
    assert main(["summary", "alexnet_d2l", "alexnet_28"]) == 0
    table = capsys.readouterr().out
    assert "forward FLOPs" in table and "alexnet_28" in table


def test_cli_comparison_counts_a_model_that_rejects_the_shared_input_at_its_default(capsys):
    # The issue's own example: the paper's alexnet takes 227 px, so it is counted there, with a note.
    assert main(["summary", "alexnet", "resnet18", "--input", "3,224,224", "--format", "csv"]) == 0
    captured = capsys.readouterr()
    records = {r["model"]: r for r in csv.DictReader(io.StringIO(captured.out))}
    assert records["alexnet"]["input_size"] == "3x227x227"
    assert records["resnet18"]["input_size"] == "3x224x224"
    assert "alexnet cannot take 3x224x224" in captured.err
    assert main(["summary", "alexnet", "--input", "3,224,224"]) == 2  # alone, it stays an error


def test_cli_table_and_measure(capsys):
    args = ["summary", "alexnet_28", "--num-classes", "10", "--option", "width_mult=0.125",
            "--batch-size", "2", "--measure", "--repeats", "1", "--depth", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fwd ms" in out and "measured peak memory" in out and "peak training memory" in out


def test_cli_errors(capsys):
    assert main(["summary", "alexnet_d2l", "--in-channels", "1", "--input", "3,224,224"]) == 2
    assert "alexnet_d2l" in capsys.readouterr().err
    assert main(["summary", "alexnet", "--input", "3,100,100"]) == 2
    assert "227" in capsys.readouterr().err
    assert main(["summary", "alexnett"]) == 2
    assert "did you mean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["summary", "alexnet", "--input", "3,224"])


def test_a_batch_of_one_through_batch_norm_advises_the_batch_not_another_size():
    from classicnets import create_model, summarize
    from classicnets.errors import InputShapeError

    with torch.device("meta"):
        model = create_model("resnet18")
    with pytest.raises(InputShapeError, match=r"batch of 2 or more \(--batch-size 2.*--eval"):
        summarize(model, input_size=(3, 28, 28))
    assert summarize(model, input_size=(3, 28, 28), batch_size=2).totals.params == 11_689_512
