"""The benchmarks compare like with like: d2l's hand-written pipeline and classicnets' give the same batches,
and the FLOP count and matmul peak that MFU uses are sane. (Timings themselves are benchmarks, not tests.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import classicnets  # noqa: E402
import common  # noqa: E402
import d2l_baseline  # noqa: E402
from classicnets.data import build_loaders, load_dataset, make_synthetic  # noqa: E402


@pytest.mark.parametrize(("height", "width"), [(28, 56), (28, 28), (300, 450)])
def test_d2l_transforms_match_torchvision_semantics(height, width):
    """Resize(224) takes the shorter side to 224 keeping the aspect, with PIL's antialiased bilinear filter;
    ToTensor gives CHW float in [0, 1]. Checked against torch's own antialiased bilinear resize (what
    torchvision's tensor Resize runs): equal up to PIL's rounding to whole grey levels."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    ours = d2l_baseline.ToTensor()(d2l_baseline.Resize(224)(d2l_baseline.Image.fromarray(pixels, mode="L")))
    size = (224, 224 * width // height) if height <= width else (224 * height // width, 224)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(pixels).float()[None, None] / 255, size=size, mode="bilinear", align_corners=False,
        antialias=True,
    )[0]
    assert ours.shape == expected.shape == (1, *size) and ours.dtype == torch.float32
    assert float((ours - expected).abs().max()) <= 1.001 / 255


def test_d2l_batch_equals_classicnets_batch():
    """The same 8 training images through PIL (d2l) and through the device loader: the same pixels up to
    the two bilinear implementations' rounding, so the speed comparison is of equal inputs. (Generated
    28x28 images: what is compared is the two pipelines, not the data.)"""
    train = make_synthetic("train")
    images, labels = train.images[:8, 0], train.labels[:8]
    transform = d2l_baseline.Compose([d2l_baseline.Resize(224), d2l_baseline.ToTensor()])
    d2l_set = d2l_baseline.FashionMNISTPIL(images, labels, transform)
    d2l_batch = torch.stack([d2l_set[i][0] for i in range(8)])

    loaders = build_loaders((train, train), image_size=224, batch_size=8, normalize=False, augment="none")
    ours = next(iter(loaders.test))[0]  # the test loader keeps the order: images 0..7
    assert ours.shape == d2l_batch.shape == (8, 1, 224, 224)
    difference = (ours - d2l_batch).abs()
    assert float(difference.mean()) < 0.01 and float(difference.max()) < 0.1


def test_d2l_fashion_mnist_reader_reads_what_classicnets_reads(fashion_mnist_dir):
    """d2l's reader of the real files gives the images and labels load_dataset gives."""
    images, labels = d2l_baseline.fashion_mnist_arrays(fashion_mnist_dir, train=True)
    train = load_dataset("fashion-mnist", "train", data_dir=fashion_mnist_dir)
    assert torch.equal(train.images[:, 0], images) and torch.equal(train.labels, labels)


def test_d2l_subset_is_the_trainers_subset():
    """--train-subset picks the same class-balanced images as classicnets' --subset."""
    train = make_synthetic("train")
    keep = d2l_baseline.train_subset_indices(train.labels, 1000, seed=0)
    assert len(keep) == 1000 and torch.bincount(train.labels[keep], minlength=10).tolist() == [100] * 10
    loaders = build_loaders("synthetic", image_size=28, batch_size=100, subset=1000)
    assert torch.equal(loaders.train.labels, train.labels[keep])


def test_train_flops_of_d2l_alexnet_match_the_reference():
    """FlopCounterMode on one image: forward 1.88 GFLOP (reference section 5), training about 3x forward."""
    with torch.device("meta"):  # shapes only: no memory, no init work
        model = classicnets.create_model("alexnet_d2l", num_classes=10, in_channels=1)
    images, labels = torch.rand(1, 1, 224, 224, device="meta"), torch.tensor([3], device="meta")
    flops = common.count_train_flops(model, images, labels)
    assert flops["forward"] / 1e9 == pytest.approx(1.88, abs=0.02)
    assert 2.5 < flops["train"] / flops["forward"] < 3.1  # conv1's input needs no gradient
    assert all(p.grad is None for p in model.parameters())  # the count leaves no gradients behind


def test_matmul_peak_is_measured_in_the_asked_dtype():
    peak = common.measure_matmul_peak(torch.device("cpu"), torch.bfloat16, seconds=0.05, sizes=(256, 512))
    assert peak["dtype"] == "bfloat16" and peak["flops_per_s"] > 1e9 and peak["matmul_n"] in (256, 512)


# Each script at a tiny size, in its own interpreter (they change process-wide settings), writing into a
# temporary results folder: what `make bench` and the GPU commands in docs/performance.md run, end to end.
TINY_RUNS = {
    "train_step": ["--models", "alexnet_28", "--configs", "fp32", "bf16+cl+reuse", "--batch-size", "4",
                   "--steps", "1", "--reps", "1", "--warmup", "1"],
    "vs_d2l": ["--subset", "128", "--epochs", "1", "--test-images", "100", "--d2l-workers", "0"],
    "time_to_accuracy": ["--recipes", "quick", "d2l", "--subset", "256", "--epochs", "1", "--test-images",
                         "100"],
    "loader_throughput": ["--batches", "2", "--batch-size", "16", "--folder-images", "32", "--num-workers",
                          "0", "--image-size", "64", "--skip-model"],
    "epoch_overheads": ["--reps", "1", "--eval-images", "64"],
    "store_throughput": ["--images", "16", "--classes", "2", "--batch-size", "4", "--timed-images", "8",
                         "--num-workers", "0"],
    "lrn": ["--batch-size", "2", "--steps", "1", "--reps", "1"],
    "eval_memory": ["--batch-sizes", "2"],
    "compare_revisions": ["HEAD", "--reps", "1", "--probes", "step:alexnet_28:28"],  # vs the working tree
    "distributed_scaling": ["--nproc", "1", "2", "--", "--model", "alexnet_28", "--model-options",
                            "width_mult=0.0625", "--dataset", "synthetic", "--subset", "128", "--epochs", "1",
                            "--batch-size", "32"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY_RUNS))
def test_benchmark_runs_end_to_end_and_records_its_machine(script, tmp_path, request):
    import json
    import subprocess

    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    if script == "compare_revisions" and not (benchmarks.parent / ".git").exists():
        pytest.skip("compares git revisions: needs a git checkout")
    if script in ("vs_d2l", "loader_throughput", "time_to_accuracy", "epoch_overheads"):  # real data
        fashion_mnist_dir = request.getfixturevalue("fashion_mnist_dir")
    data = ["--data-dir", str(fashion_mnist_dir)] if script in ("vs_d2l", "loader_throughput") else []
    device = [] if script in ("epoch_overheads", "eval_memory", "compare_revisions") else ["--device", "cpu"]
    env = {**os.environ, "CLASSICNETS_BENCH_RESULTS": str(tmp_path), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(benchmarks.parent / "src")}
    argv = TINY_RUNS[script]
    own, train = (argv[:argv.index("--")], argv[argv.index("--"):]) if "--" in argv else (argv, [])
    done = subprocess.run([sys.executable, str(benchmarks / f"{script}.py"), *device, *data, *own,
                           *train], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [written] = list(tmp_path.glob("*.json"))
    payload = json.loads(written.read_text())
    assert {"date_utc", "device", "torch_version"} <= set(payload["machine"]), payload["machine"]
    assert written.with_suffix(".md").read_text().strip()
