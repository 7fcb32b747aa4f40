"""Distributed training: launcher variables, the torchrun shortcut, DDP equivalence on two gloo
processes, a dying rank, and AlexNet's two towers on two devices.

The two-process checks share one process group (process start-up is the cost), run on the CPU with gloo,
and use a tiny zoo model on fixed data.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from classicnets.checkpoint import load_trainer_state
from classicnets.errors import ConfigError
from classicnets.launch import strip_flag, torchrun_args
from classicnets.models.alexnet_towers import split_towers
from classicnets.models.lrn import paper_lrn
from classicnets.registry import create_model
from classicnets.training import distributed as D
from classicnets.training.loop import seed_everything

# ----------------------------------------------------------------------------------------------------
# Launcher variables and the single-process context


def test_torchrun_variables_win_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
    assert D.launcher_env(env) == {"rank": 3, "world_size": 8, "local_rank": 1}


def test_slurm_variables_give_rank_and_rank_zero_address():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08,11]", "SLURM_JOB_ID": "123456"}
    assert D.launcher_env(env) == {"rank": 5, "world_size": 8, "local_rank": 1}
    assert env["MASTER_ADDR"] == "gpu07"
    assert env["MASTER_PORT"] == str(20000 + 123456 % 20000)
    # an address the job script exported is kept
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "4000"}
    D.launcher_env(env)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "4000")


@pytest.mark.parametrize("nodelist, first", [
    ("node7", "node7"), ("gpu[03-05,09],cpu1", "gpu03"), ("a-b[1,2]", "a-b1"), ("n1,n2", "n1"),
])
def test_first_slurm_host(nodelist, first):
    assert D.first_slurm_host(nodelist) == first


def test_no_launcher_means_one_process_without_a_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.device) == (0, 1, None, torch.device("cpu"))
    assert ctx.is_main and not ctx.distributed and not torch.distributed.is_initialized()
    model = torch.nn.Linear(2, 2)
    assert D.wrap_model(model, ctx, sync_batchnorm=True) is model
    t = torch.tensor([2.0])
    assert D.all_reduce_(t, ctx) is t and t.item() == 2.0
    D.barrier(ctx)
    D.shutdown_distributed(ctx)


def test_bad_settings_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="RANK='one'"):
        D.launcher_env({"RANK": "one", "WORLD_SIZE": "2"})
    monkeypatch.setenv(D.TIMEOUT_ENV, "soon")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(ConfigError, match="CLASSICNETS_DIST_TIMEOUT='soon'"):
        D.init_distributed("cpu")
    with pytest.raises(ConfigError, match="op 'mean'"):
        D.all_reduce_(torch.ones(1), D.DistContext(0, 1, 0, torch.device("cpu"), None), op="mean")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no GPU"):
            D.init_distributed("cuda")


def test_only_failures_caused_by_another_rank_become_lost_rank_errors():
    two_ranks = D.DistContext(0, 2, 0, torch.device("cpu"), "gloo")
    with pytest.raises(D.LostRankError, match="rank 0 of 2 stopped: another rank exited") as caught:
        with D.lost_rank_errors(two_ranks):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:23981")
    assert "Connection closed by peer" in str(caught.value)  # the original first line is kept
    assert "did not answer" not in str(caught.value)  # a closed connection is no timeout
    with pytest.raises(D.LostRankError, match=r"another rank did not answer within \d+ s"):
        with D.lost_rank_errors(two_ranks):
            raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 300000ms")
    for unrelated in (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("bad")):
        with pytest.raises(type(unrelated), match=str(unrelated)):
            with D.lost_rank_errors(two_ranks):
                raise unrelated
    with pytest.raises(RuntimeError, match="Connection closed"):  # one process has no other rank to lose
        with D.lost_rank_errors(D.DistContext(0, 1, 0, torch.device("cpu"), None)):
            raise RuntimeError("Connection closed by peer")


def test_nproc_shortcut_relaunches_the_same_command_under_torchrun():
    argv = ["--traceback", "train", "--nproc", "2", "--epochs", "1", "--nproc=4", "--model", "alexnet_28"]
    command = strip_flag(argv)
    assert command == ["--traceback", "train", "--epochs", "1", "--model", "alexnet_28"]
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(torchrun_args(command, 2))
    assert (parsed.nproc_per_node, parsed.standalone, parsed.module) == ("2", True, True)
    assert [parsed.training_script, *parsed.training_script_args] == ["classicnets", *command]
    assert not D.under_launcher({})
    assert D.under_launcher({"TORCHELASTIC_RUN_ID": "x"}) and D.under_launcher({"SLURM_NTASKS": "4"})


def test_nproc_refuses_a_taken_run_folder_once_before_starting_processes(tmp_path, monkeypatch, capsys):
    import torch.distributed.run

    from classicnets.cli import main

    started = []
    monkeypatch.setattr(torch.distributed.run, "run", lambda args: started.append(args))
    (tmp_path / "run" / "last").mkdir(parents=True)
    assert main(["train", "--nproc", "2", "--out", str(tmp_path / "run")]) == 2
    assert not started and capsys.readouterr().err.count("already holds a run") == 1

    # more processes than a CPU has cores: a warning, and the processes still start
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(["train", "--nproc", "8", "--device", "cpu", "--out", str(tmp_path / "new")]) == 0
    assert len(started) == 1 and "--nproc 8 on a CPU with 2 cores" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Two gloo processes: DDP with 2 ranks x batch B ends where one process with batch 2B does


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_net(seed: int | None) -> torch.nn.Module:
    if seed is not None:
        torch.manual_seed(seed)
    return create_model("alexnet_28", num_classes=10, in_channels=1, width_mult=1 / 16, dropout=0.0)


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return max((x - y).abs().max().item() for x, y in pairs)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    # started as srun would: SLURM's variables only; rank 0's address comes from the node list
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"):
        os.environ.pop(name, None)
    os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                      SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port), **{D.TIMEOUT_ENV: "20"})
    torch.set_num_threads(1)
    ctx = D.init_distributed("cpu")
    assert os.environ["MASTER_ADDR"] == "localhost"
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.distributed) == (rank, 2, "gloo", True)

    summed, largest = torch.tensor([rank + 1.0]), torch.tensor([rank + 1.0])
    D.all_reduce_(summed, ctx)
    D.all_reduce_(largest, ctx, op="max")

    # Each rank initialises differently; DDP must start both from rank 0's weights.
    model = D.wrap_model(_tiny_net(seed=rank), ctx)
    reference = _tiny_net(seed=0)  # one process, the whole batch
    ddp_opt, ref_opt = _sgd(model), _sgd(reference)
    data = torch.Generator().manual_seed(123)
    batch = 8  # per rank
    for _ in range(4):
        x = torch.rand(2 * batch, 1, 28, 28, generator=data)
        y = torch.randint(0, 10, (2 * batch,), generator=data)
        mine = slice(rank * batch, (rank + 1) * batch)
        ddp_opt.zero_grad()
        F.cross_entropy(model(x[mine]), y[mine]).backward()
        ddp_opt.step()
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
    inner = D.unwrap_model(model)
    max_diff = _max_diff(inner, reference)
    moved = _max_diff(inner, _tiny_net(seed=0))

    sync_bn_error = ""
    try:
        D.wrap_model(torch.nn.BatchNorm2d(4), ctx, sync_batchnorm=True)
    except ConfigError as error:
        sync_bn_error = str(error)
    D.barrier(ctx)

    if rank == 1:
        os._exit(3)  # a rank that dies; rank 0 must stop with a clear error, not hang
    started = time.monotonic()
    lost = ""
    try:
        with D.lost_rank_errors(ctx):
            for _ in range(50):
                D.all_reduce_(torch.ones(1), ctx)
                time.sleep(0.05)
    except D.LostRankError as error:
        lost = str(error)
    result = {
        "sum": summed.item(), "max": largest.item(), "max_diff": max_diff, "moved": moved,
        "unwrapped_is_plain": type(inner).__name__, "sync_bn_error": sync_bn_error,
        "lost": lost, "lost_after_s": time.monotonic() - started,
    }
    with open(os.path.join(out_dir, "rank0.json"), "w") as f:
        json.dump(result, f)
    os._exit(0)  # the group cannot be torn down cleanly with a dead member


def _child_errors(context) -> str:
    """The tracebacks torch.multiprocessing saved for children that raised."""
    found = []
    for path in context.error_files:
        if os.path.exists(path):
            with open(path, "rb") as f:
                found.append(str(pickle.load(f)))
    return "\n" + "\n".join(found) if found else ""


def test_two_gloo_ranks_match_one_process_with_the_double_batch(tmp_path):
    """Two processes with SLURM's variables: DDP from different initial weights, 2 x 8 = one batch of 16,
    all-reduce sums and maxima, SyncBatchNorm refused on the CPU, and a dying rank stops the other."""
    context = mp.start_processes(_two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2,
                                 join=False, start_method="spawn")
    for process in context.processes:
        process.join(timeout=90)
    codes = [process.exitcode for process in context.processes]
    for process in context.processes:
        if process.is_alive():
            process.kill()
    assert codes == [0, 3], f"rank exit codes {codes} (None = a hang){_child_errors(context)}"
    result = json.loads((tmp_path / "rank0.json").read_text())
    assert result["sum"] == 3.0 and result["max"] == 2.0
    assert result["unwrapped_is_plain"] == "AlexNet"
    assert result["moved"] > 1e-3  # the weights did train
    assert result["max_diff"] < 1e-5, result
    assert "SyncBatchNorm" in result["sync_bn_error"] and "CUDA" in result["sync_bn_error"]
    # the survivor stopped by itself, well within the 20 s timeout, and said why
    assert result["lost_after_s"] < 20
    assert "rank 0 of 2 stopped: another rank exited" in result["lost"], result["lost"]


# ----------------------------------------------------------------------------------------------------
# AlexNet's two towers on two devices (here both on the CPU) = the grouped single-device model


def _merged_grads(towers) -> dict[str, torch.Tensor]:
    grads = {}
    for prefix, stages in (("features", towers.feature_stages), ("classifier", towers.head_stages)):
        for stage in stages:
            for name, _ in stage[0].named_parameters():
                grads[f"{prefix}.{name}"] = torch.cat([t.get_parameter(name).grad for t in stage])
    return grads


def test_two_towers_give_the_grouped_models_outputs_and_gradients():
    # float64: the paper's N(0, 0.01) init leaves conv1's gradients so small that float32 rounding
    # (a different summation order in each layout) blurs them by a few per cent
    grouped = create_model("alexnet", num_classes=10, width_mult=0.125, dropout=0.0).double()
    towers = split_towers(grouped, devices=("cpu", "cpu"))
    # the split is where the paper exchanges: conv1..pool2 | conv3..pool5, and fc6 | fc7 | fc8
    assert [list(stage[0]._modules)[0] for stage in towers.feature_stages] == ["conv1", "conv3"]
    assert [list(stage[0]._modules)[0] for stage in towers.head_stages] == ["fc6", "fc7", "fc8"]
    assert towers.feature_stages[0][1].conv1.out_channels == grouped.features.conv1.out_channels // 2
    assert towers.feature_stages[0][1].conv2.in_channels == grouped.features.conv2.in_channels // 2

    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    expected, found = grouped(x), towers(x)
    assert found.shape == (2, 10)
    torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)
    expected.square().sum().backward()
    found.square().sum().backward()
    grads = _merged_grads(towers)
    assert set(grads) == {name for name, _ in grouped.named_parameters()}
    for name, parameter in grouped.named_parameters():
        torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-9, atol=1e-14, msg=name)
    assert towers.grouped_state_dict().keys() == grouped.state_dict().keys()
    for key, value in towers.grouped_state_dict().items():
        assert torch.equal(value, grouped.state_dict()[key])
    torch.testing.assert_close(towers.forward_head(towers.forward_features(x)), found)


def test_grouped_alexnet_normalises_within_each_tower():
    grouped = create_model("alexnet", num_classes=10, width_mult=0.25, dropout=0.0).eval()
    assert grouped.features.norm1.groups == grouped.features.norm2.groups == 2
    maps = torch.rand(1, 24, 5, 5) * 40
    per_tower = grouped.features.norm1(maps)
    across = torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(maps)
    # away from the 11/12 boundary the two agree; at it, one LRN over all maps would mix the towers
    torch.testing.assert_close(per_tower[:, :10], across[:, :10])
    torch.testing.assert_close(per_tower[:, 14:], across[:, 14:])
    assert (per_tower[:, 10:14] - across[:, 10:14]).abs().max() > 1e-3


def test_split_towers_rejects_other_models_and_device_counts():
    with pytest.raises(ConfigError, match="paper's alexnet"):
        split_towers(torch.nn.Linear(2, 2), devices=("cpu", "cpu"))
    with pytest.raises(ConfigError, match="single tower"):
        split_towers(create_model("alexnet_28", width_mult=1 / 16), devices=("cpu", "cpu"))
    with pytest.raises(ConfigError, match="single tower"):
        split_towers(create_model("alexnet", width_mult=0.125, towers=1), devices=("cpu", "cpu"))
    with pytest.raises(ConfigError, match="3 device.*towers=2"):
        split_towers(create_model("alexnet", width_mult=0.125), devices=("cpu", "cpu", "cpu"))
    for spanning in (paper_lrn(), torch.nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)):
        across_towers = create_model("alexnet", width_mult=0.125)
        across_towers.features.norm1 = spanning  # one window over both towers' maps: no GPU holds them all
        with pytest.raises(ConfigError, match="LRN to normalise within the 2 towers' maps"):
            split_towers(across_towers, devices=("cpu", "cpu"))


def test_split_towers_keep_each_lrns_constants():
    grouped = create_model("alexnet", num_classes=10, width_mult=0.125, dropout=0.0).double()
    grouped.features.norm1 = paper_lrn(alpha=1e-2, k=1.0, groups=2)  # an ablation's constants
    x = torch.randn(1, 3, 227, 227, dtype=torch.float64)
    torch.testing.assert_close(split_towers(grouped, devices=("cpu", "cpu"))(x), grouped(x), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_two_towers_on_two_gpus():
    grouped = create_model("alexnet", num_classes=10, width_mult=0.5, dropout=0.0).eval()
    towers = split_towers(grouped, devices=("cuda:0", "cuda:1")).eval()
    x = torch.randn(4, 3, 227, 227)
    found = towers(x)
    assert found.device == torch.device("cuda:0")
    assert {p.device for p in towers.feature_stages[0][1].parameters()} == {torch.device("cuda:1")}
    torch.testing.assert_close(found.cpu(), grouped(x), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------
# End to end through the trainer and the CLI: torchrun processes on the synthetic data set

SRC = Path(__file__).resolve().parent.parent / "src"
TINY_RUN = ["--device", "cpu", "--model", "alexnet_28", "--model-options", "width_mult=0.0625,dropout=0",
            "--dataset", "synthetic", "--subset", "128", "--epochs", "2", "--batch-size", "32",
            "--optimizer", "sgd", "--lr", "0.01", "--momentum", "0.9", "--no-progress", "--log-every", "4",
            "--precision", "fp32", "--no-channels-last"]  # equal to float rounding: fp32 on every machine
# lr 0.01: at 0.05 with momentum 0.9 this tiny net amplifies float rounding (a batch of 16 and one of 32 take
# different conv kernels; a max-pool near-tie can then route a gradient elsewhere) to 1e-3 within 8 steps

# Under torchrun: rank 1 dies when its second epoch starts, on the first attempt only.
DIE_ONCE = """
import os, sys
from classicnets.training import loop

run_epoch = loop.Trainer._run_epoch

def dying_run_epoch(self, epoch, stop):
    if epoch == 1 and self.ctx.rank == 1 and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os._exit(17)
    return run_epoch(self, epoch, stop)

loop.Trainer._run_epoch = dying_run_epoch
from classicnets.cli import main
sys.exit(main())
"""


def _run(command: list[str], timeout: float = 240, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")},
           **(env or {})}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", **{D.TIMEOUT_ENV: "60"})
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> Path:
    """The reference: one process, the whole global batch of 32, in this process."""
    from classicnets.cli import main

    out = tmp_path_factory.mktemp("one") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1); 2 cores are shared
    try:
        assert main(["train", *TINY_RUN, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(run: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    found = load_file(run / "last" / "model.safetensors")
    expected = load_file(reference / "last" / "model.safetensors")
    assert found.keys() == expected.keys()
    seed_everything(0)  # as the trainer does (--seed 0) before it builds the model
    initial = _tiny_net(seed=None).state_dict()
    assert max((expected[k] - initial[k]).abs().max().item() for k in expected) > 2e-3  # it did train
    for key in expected:
        torch.testing.assert_close(found[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    for mine, theirs in zip(_history(run), _history(reference), strict=True):
        # all-reduced metrics: the sums over both ranks' shards are the one process's sums
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert mine["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-4)
        assert abs(mine["test_acc"] - theirs["test_acc"]) <= 1 / 512


@pytest.mark.slow
def test_nproc_2_with_accumulation_trains_like_one_process(tmp_path, one_process_run):
    """`train --nproc 2 --grad-accum-steps 2`: 2 processes x 2 micro-batches of 8 = one batch of 32."""
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "classicnets", "train", "--nproc", "2", "--grad-accum-steps", "2",
                 *TINY_RUN, "--out", str(out)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "on 2 x cpu (gloo)" in done.stdout
    assert done.stdout.count("best test acc") == 1  # only rank 0 speaks
    assert done.stdout.count("epoch 2,") == 1
    _assert_same_training(out, one_process_run)


@pytest.mark.slow
def test_torchrun_restart_resumes_from_the_last_checkpoint(tmp_path, one_process_run):
    """Rank 1 dies in epoch 2; torchrun restarts both ranks, which resume from epoch 1's checkpoint."""
    script = tmp_path / "die_once.py"
    script.write_text(DIE_ONCE)
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "--max-restarts", "1", "--monitor-interval", "0.2", str(script), "train", *TINY_RUN,
                 "--out", str(out)])
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "exitcode  : 17" in log or "exitcode: 17" in log, log[-4000:]  # torchrun's failure report
    assert f"resuming {out / 'last'} at epoch 2" in log, log[-4000:]
    assert load_trainer_state(out)["epoch"] == 2
    assert [r["epoch"] for r in _history(out)] == [1, 2]
    # an exact resume: the same weights as the uninterrupted single-process run
    _assert_same_training(out, one_process_run)


# Under torchrun: rank 1 gets Ctrl-C after the step named by STOP_AT ("epoch:step", both from 0).
STOP_ONCE = """
import os, signal, sys
from classicnets.training import loop

train_step = loop.Trainer._train_step

def train_step_then_interrupt(self, x, y, step, total, sums):
    train_step(self, x, y, step, total, sums)
    if self.ctx.rank == 1 and os.environ.get("STOP_AT") == f"{len(self.history)}:{step}":
        signal.raise_signal(signal.SIGINT)

loop.Trainer._train_step = train_step_then_interrupt
from classicnets.cli import main
sys.exit(main())
"""

# Dropout on, so that each rank's RNG state matters; 8 steps an epoch, and the ranks agree to stop every 2.
MID_EPOCH_RUN = [*TINY_RUN, "--model-options", "width_mult=0.0625,dropout=0.5", "--subset", "256",
                 "--log-every", "2"]


@pytest.mark.slow
def test_two_ranks_interrupted_mid_epoch_resume_exactly(tmp_path):
    """Ctrl-C on rank 1 during epoch 2: both ranks stop after the same step and save every rank's RNG
    states and partial sums; --resume then retraces the uninterrupted two-process run bit for bit."""
    script = tmp_path / "stop_once.py"
    script.write_text(STOP_ONCE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                str(script), "train", *MID_EPOCH_RUN]

    straight = _run([*torchrun, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    out = tmp_path / "run"
    stopped = _run([*torchrun, "--out", str(out)], env={"STOP_AT": "1:2"})
    assert stopped.returncode != 0 and "--resume" in stopped.stdout + stopped.stderr, stopped.stderr[-3000:]
    state = load_trainer_state(out)
    assert (state["epoch"], state["step_in_epoch"]) == (1, 4)  # interrupted after 3 steps; they agree every 2
    resumed = _run([*torchrun, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    from safetensors.torch import load_file

    found, expected = load_file(out / "last" / "model.safetensors"), load_file(
        tmp_path / "straight" / "last" / "model.safetensors")
    for key in expected:
        assert torch.equal(found[key], expected[key]), key
    for mine, theirs in zip(_history(out), _history(tmp_path / "straight"), strict=True):
        assert (mine["train_loss"], mine["train_acc"]) == (theirs["train_loss"], theirs["train_acc"])


# Under torchrun: rank 1's second batch is all NaN, so its loss is the first to become NaN.
NAN_ON_RANK_1 = """
import sys, torch
from classicnets.training import loop

train_step = loop.Trainer._train_step

def train_step_with_a_nan_batch(self, x, y, step, total, sums):
    if self.ctx.rank == 1 and step == 1:
        x = torch.full_like(x, float("nan"))
    train_step(self, x, y, step, total, sums)

loop.Trainer._train_step = train_step_with_a_nan_batch
from classicnets.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_with_the_nan_message(tmp_path):
    """At the check after step 2 only rank 1's summed losses are NaN (rank 0's loss of that step came
    before the all-reduce that spread the NaN into the weights): the ranks agree there, so both report
    the NaN instead of rank 0 losing its peer."""
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    done = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 str(script), "train", *MID_EPOCH_RUN, "--out", str(tmp_path / "run")])
    log = done.stdout + done.stderr
    assert done.returncode != 0, log[-3000:]
    assert "NaN or infinite in epoch 1 (by step 2)" in log, log[-3000:]
    assert "another rank exited" not in log, log[-3000:]
