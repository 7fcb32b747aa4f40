"""Run the benchmarks (`make bench`) and write benchmarks/results/README-table.md, the table the README shows.

Each benchmark runs in its own process (a clean torch state, its memory returned when it ends) and writes
its own JSON + Markdown under benchmarks/results/. The default set takes roughly 15-25 minutes on a
2-core CPU; ``--full`` adds the end-to-end time-to-accuracy runs (classicnets.train, d2l and fast recipes,
reduced on the CPU), ``--only`` picks steps, ``--tables-only`` rebuilds the table from recorded results.

    python benchmarks/run_all.py                      # CPU: the default set, then the README table
    python benchmarks/run_all.py --full --device cuda # a GPU: everything at full size
    python benchmarks/run_all.py --tables-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import common
import train_step

HERE = Path(__file__).resolve().parent
# On the CPU: the four eager configs, two compiled ones (compiling costs a minute or more each there) and
# the Trainer's own setting (bf16 + channels_last with host memory reused)
CPU_CONFIGS = ["fp32", "fp32+cl", "bf16", "bf16+cl", "fp32+compile", "bf16+cl+compile", "bf16+cl+reuse"]


def steps(args) -> dict[str, list[str]]:
    """Step name -> command line (script and arguments)."""
    cuda = args.device == "cuda"
    dev = ["--device", args.device]
    zoo = ["*"] if (args.zoo == "all" or cuda) else list(train_step.QUICK_ZOO)
    configs = ["all"] if cuda else CPU_CONFIGS
    fast = "bf16+cl" if cuda else train_step.TRAINER_CPU_CONFIG
    d2l_batch = [] if cuda else ["--batch-size", "128", "--steps", "2"]  # the d2l recipe's batch
    zoo_size = [] if cuda else ["--batch-size", "8", "--steps", "1", "--reps", "3", "--warmup", "1"]
    plan = {
        "train_step": ["train_step.py", "--models", "alexnet_d2l", "--configs", *configs,
                       "--out", "train_step", *([] if cuda else [*d2l_batch, "--warmup", "1"]), *dev],
        "train_step_zoo": ["train_step.py", "--models", *zoo, "--configs", "fp32", fast,
                           "--out", "train_step_zoo", *zoo_size, *dev],
        "loader_throughput": ["loader_throughput.py", *dev],
        "store_throughput": ["store_throughput.py", *dev],  # a prepared store against its JPEG folder
        "epoch_overheads": ["epoch_overheads.py"],  # checkpoint, curves and eval costs (CPU)
        "lrn": ["lrn.py", *dev],  # the paper AlexNet's LRN: classicnets' against torch's composite
        # where the time of a step goes (torch.profiler tables in results/profile_*.txt)
        "profile_fp32": ["train_step.py", "--models", "alexnet_d2l", "--profile", "fp32", *d2l_batch, *dev],
        "profile_bf16": ["train_step.py", "--models", "alexnet_d2l", "--profile", fast, *d2l_batch, *dev],
        # the one recipe a 2-core CPU runs in full: time to 0.88 on the real test set
        "time_to_accuracy_quick": ["time_to_accuracy.py", "--recipes", "quick", "--subset", "0",
                                   "--out", "time_to_accuracy_quick", *dev],
        "vs_d2l": ["vs_d2l.py", *(["--subset", "0", "--epochs", "10", "--test-images", "0"] if cuda else []),
                   *dev],
    }  # fmt: skip
    if args.full:
        reduced = ["--subset", "4096", "--epochs", "2", "--test-images", "2000"]
        plan["time_to_accuracy"] = ["time_to_accuracy.py", "--recipes", "d2l", "fast", *dev] + (
            ["--subset", "0"] if cuda else reduced
        )
    return plan


def run_step(name: str, command: list[str]) -> dict:
    print(f"\n=== {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(HERE / command[0]), *command[1:]], cwd=HERE.parent)
    seconds = time.perf_counter() - start
    print(f"=== {name}: exit {code}, {seconds:.0f} s", flush=True)
    return {"step": name, "exit_code": code, "seconds": seconds}


# --------------------------------------------------------------------------- the README table


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _where(machine: dict) -> str:
    return f"{common.device_label(machine)}, {machine['date_utc']}"


def headline_section(vs: dict) -> str:
    s, images = vs["summary"], vs["settings"]["train_images"]
    last = vs["epochs"][-1]
    ratios = ", ".join(f"{e['speedup']:.2f}x" for e in vs["epochs"])
    return (
        f"**classicnets vs d2l's own pipeline** (alexnet_d2l, 224 px, d2l recipe, same "
        f"{f'{images:,}' if images else 'all 60,000'} "
        f"images, same steps, same initial weights; {_where(vs['machine'])}): d2l "
        f"{common.fmt(s['d2l_images_per_s'])} img/s, classicnets {common.fmt(s['classicnets_images_per_s'])} "
        f"img/s, **{s['speedup']:.2f}x**; test accuracy after {last['epoch']} epochs "
        f"{last['d2l_test_acc']:.3f} (d2l) vs {last['classicnets_test_acc']:.3f} (classicnets). "
        f"Per-epoch ratios {ratios} (they vary with "
        f"other load on the machine): `benchmarks/results/vs_d2l.md`."
    )  # fmt: skip


def step_section(ts: dict, title: str) -> str:
    rows = [
        [r["model"], "x".join(map(str, r["input"][1:])), r["config"], common.fmt(r["images_per_s"]),
         f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") else "-", f"{r['mfu'] * 100:.1f}%",
         f"{r['cpu_share'] * 100:.0f}%" if "cpu_share" in r else "-",
         common.fmt(r["page_faults_per_step"], 0) if "page_faults_per_step" in r else "-"]
        for r in ts["rows"]
    ]  # fmt: skip
    peaks = ts["peaks"]
    return (
        f"**{title}** (batch {ts['settings']['batch_size']}, {_where(ts['machine'])}; MFU against the matmul "
        f"peak measured in the same run: fp32 {peaks['fp32']['flops_per_s'] / 1e12:.2f}, bf16 "
        f"{peaks['bf16']['flops_per_s'] / 1e12:.2f} TFLOP/s):\n\n"
        + common.markdown_table(["model", "input", "config", "img/s", "vs fp32", "MFU", "CPU share",
                                 "faults/step"], rows)
    )  # fmt: skip


def loader_section(lt: dict) -> str:
    rows = [[r["loader"], common.fmt(r["images_per_s"], 0)] for r in lt["loaders"]]
    rows += [
        [m["model"] + f" (batch {m['batch']})", common.fmt(m["images_per_s"])] for m in lt["model_steps"]
    ]
    return f"**Loader against model** (224 px, {_where(lt['machine'])}):\n\n" + common.markdown_table(
        ["what", "img/s"], rows
    )


def store_section(st: dict) -> str:
    rows = [[r["what"], common.fmt(r["images_per_s"], 0)] for r in st["rows"]]
    summary = st["summary"]
    return (
        f"**Prepared store against its JPEG folder** (`classicnets prepare`; the paper's batches at 224, "
        f"batch {st['settings']['batch_size']}, {_where(st['machine'])}, shared: 1-min load average "
        f"{st['machine']['load_average_1m']:.0f}): store / folder "
        f"{summary['store_vs_folder']:.1f}x with the transform on the CPU, "
        f"{summary['host_side_store_vs_folder']:.0f}x on the host side alone (what a GPU waits for; one P100 "
        f"trained AlexNet at 2,987 img/s in TensorFlow's 2017 benchmarks):\n\n"
        + common.markdown_table(["what", "img/s"], rows)
    )


def tta_section(tta: dict, what: str = "reduced runs on the CPU") -> str:
    rows = []
    for recipe, run in tta["runs"].items():
        s, h = run["settings"], run["history"]
        scope = f"{s['subset']:,} imgs" if s.get("subset") else "full"
        reached = run.get("time_to_target_s")
        target = tta["targets"][recipe]
        rows.append([recipe, f"{scope}, {len(h)} ep", f"{run['final_test_acc']:.3f}",
                     f"{reached:.0f} s" if reached is not None else f"not reached ({target})",
                     common.fmt(run["train_images_per_s"]), f"{run['wall_seconds']:.0f} s"])  # fmt: skip
    return (
        f"**End to end with `classicnets.train`** ({_where(tta['machine'])}; {what}):\n\n"
        + common.markdown_table(
            ["recipe", "run", "test acc", "time to target", "train img/s", "wall (call to return)"], rows
        )
    )


def lrn_section(lrn: dict) -> str:
    layers = {(r["layer"], r["lrn"]): r["ms"] for r in lrn["layers"]}
    per_layer = ", ".join(f"{layer} {layers[layer, 'torch composite'] / layers[layer, 'classicnets']:.1f}x"
                          for layer in dict.fromkeys(r["layer"] for r in lrn["layers"]))
    steps = {(r["config"], r["lrn"]): r["step_ms"] for r in lrn["steps"]}
    per_step = ", ".join(f"{config} {steps[config, 'torch composite'] / steps[config, 'classicnets']:.2f}x"
                         for config in dict.fromkeys(r["config"] for r in lrn["steps"]))
    return (
        f"**The paper AlexNet's LRN** written out with its gradient, against torch's composite "
        f"(batch {lrn['settings']['batch_size']}, {_where(lrn['machine'])}): forward + backward "
        f"{per_layer}; the whole training step {per_step}. `benchmarks/results/lrn.md`."
    )


GPU_NOTE = (
    "GPU targets (one H100: d2l recipe 10 epochs at 224 in <= 15 s at test acc >= 0.88, >= 35% bf16 MFU "
    "in the AlexNet step, fast recipe > 0.92 in < 60 s) are not measured on this machine; "
    "`docs/performance.md` gives the commands."
)


def readme_table(results: Path = common.RESULTS_DIR) -> str:
    parts = ["<!-- generated by benchmarks/run_all.py from benchmarks/results/*.json -->"]
    sources = [
        ("vs_d2l", headline_section),
        ("train_step", lambda d: step_section(d, "Training step, alexnet_d2l at 224")),
        ("train_step_zoo", lambda d: step_section(d, "Training step, the zoo at each recipe's input size")),
        ("lrn", lrn_section),
        ("loader_throughput", loader_section),
        ("store_throughput", store_section),
        ("time_to_accuracy_quick", lambda d: tta_section(d, "the quick recipe in full, on all 10,000 "
                                                             "test images")),
        ("time_to_accuracy", tta_section),
    ]
    for name, render in sources:
        data = _load(results, name)
        if data is not None:
            parts.append(render(data))
    parts.append(GPU_NOTE)
    return "\n\n".join(parts) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu" if not torch.cuda.is_available() else "cuda",
                   help="cpu or cuda (default: cuda when present)")  # fmt: skip
    p.add_argument("--full", action="store_true", help="also the time-to-accuracy runs")
    p.add_argument(
        "--zoo",
        choices=("quick", "all"),
        default="all",
        help="all: every registered model (about 9 minutes on 2 CPU cores); quick: "
        + " ".join(train_step.QUICK_ZOO),
    )
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    p.add_argument("--tables-only", action="store_true", help="only rebuild README-table.md from results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    outcomes = []
    if not args.tables_only:
        plan = steps(args)
        unknown = set(args.only or ()) - set(plan)
        if unknown:
            raise SystemExit(f"error: unknown step(s) {sorted(unknown)}; steps: {', '.join(plan)}")
        for name, command in plan.items():
            if not args.only or name in args.only:
                outcomes.append(run_step(name, command))
    table = readme_table()
    path = common.RESULTS_DIR / "README-table.md"
    path.write_text(table)
    print(f"\n{table}\nwrote {path}")
    for o in outcomes:
        print(f"  {o['step']:18s} exit {o['exit_code']}  {o['seconds']:.0f} s")
    return 1 if any(o["exit_code"] for o in outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
