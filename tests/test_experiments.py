"""`classicnets reproduce`: claims and rules on made-up histories, the specs, and the runner end to end."""

from __future__ import annotations

import json
import math

import pytest

import classicnets
from classicnets.cli import main
from classicnets.experiments import claims as cl
from classicnets.experiments import list_experiments, load_experiment, reproduce
from classicnets.experiments.spec import ExperimentError, parse_experiment


def record(values: list[float], key: str = "test_acc", status: str = "done", **extra) -> dict:
    history = [{"epoch": i + 1, key: v, "train_time": 2.0} for i, v in enumerate(values)]
    return {"status": status, "history": history, "evals": {}, **extra}


# ------------------------------------------------------------------------------------ reading metrics


def test_at_reads_named_and_relative_epochs():
    runs = {("a", 0): record([0.1, 0.2, 0.3, 0.4])}
    at = {"read": "at", "run": "a", "key": "test_acc"}
    assert cl.read({**at, "epoch": 2}, runs, 0).value == 0.2
    assert cl.read({**at, "epoch": "first"}, runs, 0).value == 0.1
    assert cl.read({**at, "epoch": "half"}, runs, 0).value == 0.2  # epoch 2 of 4
    assert cl.read({**at, "epoch": "last"}, runs, 0).value == 0.4
    with pytest.raises(cl.MissingRun):
        cl.read({**at, "epoch": 5}, runs, 0)


def test_errors_are_one_minus_accuracy():
    runs = {("a", 0): record([0.7, 0.9], key="train_acc")}
    value = cl.read({"read": "at", "run": "a", "key": "train_error", "epoch": "last"}, runs, 0).value
    assert value == pytest.approx(0.1)


def test_epochs_to_interpolates_between_epochs():
    runs = {("a", 0): record([0.5, 0.3, 0.1], key="train_loss")}
    # 0.3 at epoch 2, 0.1 at epoch 3: 0.2 is crossed half-way through epoch 3
    reading = cl.read({"read": "epochs_to", "run": "a", "key": "train_loss", "below": 0.2}, runs, 0)
    assert reading.value == pytest.approx(2.5) and not reading.bounds
    seconds = cl.read({"read": "seconds_to", "run": "a", "key": "train_loss", "below": 0.2}, runs, 0)
    assert seconds.value == pytest.approx(5.0)  # 2 s per epoch
    first = cl.read({"read": "epochs_to", "run": "a", "key": "train_loss", "below": 0.9}, runs, 0)
    assert first.value == 1.0


def test_a_threshold_never_crossed_counts_the_run_length_as_a_bound():
    runs = {("a", 0): record([0.5, 0.4], key="train_loss")}
    reading = cl.read({"read": "epochs_to", "run": "a", "key": "train_loss", "below": 0.1}, runs, 0)
    assert reading.value == 2.0 and reading.bounds == {"a"}


def test_diff_and_ratio_pair_runs_by_seed():
    runs = {("a", 0): record([0.8]), ("b", 0): record([0.6]),
            ("a", 1): record([0.9]), ("b", 1): record([0.3])}
    diff = {"read": "diff", "a": {"read": "at", "run": "a", "key": "test_acc"},
            "b": {"read": "at", "run": "b", "key": "test_acc"}}
    m = cl.measure(diff, runs, [0, 1])
    assert m.values == pytest.approx([0.2, 0.6]) and m.seeds == [0, 1]
    ratio = {**diff, "read": "ratio"}
    assert cl.read(ratio, runs, 1).value == pytest.approx(3.0)


def test_runs_that_did_not_finish_are_missing_not_zero():
    runs = {("a", 0): record([0.8]), ("a", 1): record([0.1], status="diverged")}
    m = cl.measure({"read": "at", "run": "a", "key": "test_acc"}, runs, [0, 1, 2])
    assert m.values == [0.8] and set(m.missing) == {1, 2}


def test_eval_reads_the_test_time_views():
    runs = {("a", 0): record([0.8], evals={"ten-crop": {"acc": 0.83}, "none": {"acc": 0.8}})}
    assert cl.read({"read": "eval", "run": "a", "view": "ten-crop", "key": "acc"}, runs, 0).value == 0.83


# ------------------------------------------------------------------------------------------- the rules


def measured(*values: float) -> cl.Measurement:
    return cl.Measurement(list(values), list(range(len(values))), set(), {})


@pytest.mark.parametrize("values, verdict", [
    ((0.88, 0.89), cl.REPRODUCED),          # within 0.02 of 0.884
    ((0.80, 0.81), cl.NOT_REPRODUCED),      # off by 0.08, spread small
    ((0.80, 0.92), cl.INCONCLUSIVE),        # mean 0.86 off by 0.024, but the seeds disagree widely
    ((0.85,), cl.NOT_REPRODUCED),           # one seed: the tolerance alone decides
])
def test_within(values, verdict):
    assert cl.verdict({"kind": "within", "tolerance": 0.02}, 0.884, measured(*values)) == verdict


@pytest.mark.parametrize("values, kind, verdict", [
    ((0.02, 0.03, 0.025), "positive", cl.REPRODUCED),
    ((-0.02, -0.03, -0.025), "positive", cl.NOT_REPRODUCED),
    ((0.02, -0.02, 0.01), "positive", cl.INCONCLUSIVE),   # the spread covers 0
    ((0.05,), "positive", cl.INCONCLUSIVE),                # one seed: no spread to judge by
    ((-0.02, -0.03, -0.025), "negative", cl.REPRODUCED),
])
def test_sign_rules(values, kind, verdict):
    assert cl.verdict({"kind": kind}, None, measured(*values)) == verdict


@pytest.mark.parametrize("values, verdict", [
    ((4.0, 5.0, 6.0), cl.REPRODUCED),
    ((1.1, 1.2, 1.0), cl.NOT_REPRODUCED),
    ((1.0, 3.5, 2.0), cl.INCONCLUSIVE),
])
def test_at_least(values, verdict):
    assert cl.verdict({"kind": "at_least", "value": 2.0}, 6.0, measured(*values)) == verdict


def test_no_measurement_is_no_data():
    assert cl.verdict({"kind": "positive"}, None, measured()) == cl.NO_DATA


def test_margin_is_two_standard_errors():
    m = measured(1.0, 2.0, 3.0)
    assert m.std == pytest.approx(1.0) and m.margin == pytest.approx(2 / math.sqrt(3))


# --------------------------------------------------------------------------------------------- specs


def test_every_shipped_experiment_parses_and_resolves_at_every_scale():
    names = list_experiments()
    assert {"d2l-alexnet", "d2l-modern-cnns", "paper-relu-tanh", "paper-ablations"} <= set(names)
    for name in names:
        experiment = load_experiment(name)
        assert set(experiment.scales) == {"smoke", "cpu", "full"}, name
        for scale in experiment.scales:
            for run in experiment.runs:
                config = classicnets.TrainConfig.from_recipe(
                    **{"recipe": "d2l", **experiment.settings(run, scale)})  # every run is a valid config
                assert config.epochs >= 1


def test_a_scale_reduces_every_run_and_model_options_merge():
    experiment = load_experiment("paper-relu-tanh")
    tanh = experiment.settings("tanh", "cpu")
    assert tanh["model_options"] == {"activation": "tanh"}
    assert tanh["epochs"] == 15 and tanh["subset"] == 10000
    ablations = load_experiment("paper-ablations")
    one_tower = ablations.settings("one-tower-half", "cpu")["model_options"]
    assert one_tower == {"towers": 1, "conv_widths": [12, 32, 48, 48, 64], "stem": "small",
                         "width_mult": 0.25, "unit_bias": 0.1}
    assert ablations.settings("bias-1", "cpu")["model_options"]["unit_bias"] == 1.0


def test_unknown_experiment_and_scale_name_the_close_matches():
    with pytest.raises(ExperimentError, match="did you mean d2l-alexnet"):
        load_experiment("d2l-alexnt")
    with pytest.raises(ExperimentError, match="no scale 'cpuu'.*did you mean cpu"):
        load_experiment("d2l-alexnet").scale("cpuu")


def test_a_spec_that_reads_an_unknown_run_is_refused():
    spec = tiny_spec()
    spec["claims"][0]["metric"]["a"]["run"] = "nope"
    with pytest.raises(ExperimentError, match="unknown runs"):
        parse_experiment(spec)


def test_cli_lists_the_experiments_and_refuses_bad_names(capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in list_experiments())
    assert main(["reproduce", "paper-ablation"]) == 2
    assert "did you mean paper-ablations" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------- runner


def tiny_spec(epochs: int = 2) -> dict:
    """Two runs of a tiny net on generated images: a spec that trains in seconds."""
    return {
        "name": "tiny", "title": "a tiny test experiment", "source": "this test",
        "base": {"recipe": "d2l", "dataset": "synthetic", "model": "cuda_convnet", "image_size": 32,
                 "normalize": True, "momentum": 0.9, "lr": 0.02, "init": "xavier", "precision": "fp32",
                 "subset": 256, "test_subset": 100, "epochs": epochs, "batch_size": 64},
        "runs": {"relu": {"model_options": {"activation": "relu"}},
                 "tanh": {"model_options": {"activation": "tanh"}}},
        "scales": {"smoke": {"note": "tiny", "seeds": 2}},
        "claims": [{"id": "relu-ends-higher", "claim": "relu ends higher", "source": "none",
                    "metric": {"read": "diff", "a": {"read": "at", "run": "relu", "key": "test_acc"},
                               "b": {"read": "at", "run": "tanh", "key": "test_acc"}},
                    "rule": {"kind": "positive"}}],
        "figures": [{"file": "fig.png", "title": "t", "key": "train_error", "runs": {"relu": "solid",
                                                                                      "tanh": "dashed"}}],
    }


def test_runner_writes_results_report_plots_and_redoes_nothing(tmp_path, monkeypatch):
    experiment = parse_experiment(tiny_spec())
    out = tmp_path / "out"
    results = reproduce(experiment, scale="smoke", out=out, print_fn=lambda _: None)
    assert [(r["run"], r["seed"], r["status"]) for r in results["runs"]] == [
        ("relu", 0, "done"), ("relu", 1, "done"), ("tanh", 0, "done"), ("tanh", 1, "done")]
    saved = json.loads((out / "results.json").read_text())
    claim = saved["claims"][0]
    assert claim["n"] == 2 and claim["verdict"] in (cl.REPRODUCED, cl.NOT_REPRODUCED, cl.INCONCLUSIVE)
    assert len(saved["runs"][0]["history"]) == 2 and saved["machine"] and saved["torch"]
    report = (out / "report.md").read_text()
    assert "relu ends higher" in report and "![fig.png](fig.png)" in report
    assert (out / "accuracy.png").stat().st_size > 10_000 and (out / "fig.png").exists()

    import classicnets.experiment as wiring

    # while it runs, the report already says which runs are still to come
    from classicnets.experiments.report import render_report
    from classicnets.experiments.runner import _results

    records = {(r["run"], r["seed"]): r for r in results["runs"][:1]}
    partial = _results(experiment, "smoke", 2, out, records, pending=[("relu", 1), ("tanh", 0), ("tanh", 1)])
    assert "Not run yet" in render_report(partial, []) and "tanh seed 1" in render_report(partial, [])

    monkeypatch.setattr(wiring, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = reproduce(experiment, scale="smoke", out=out, print_fn=lambda _: None)
    assert again["claims"][0]["values"] == claim["values"]


def test_runner_resumes_an_interrupted_run_from_its_checkpoint(tmp_path):
    experiment = parse_experiment(tiny_spec(epochs=2))
    out = tmp_path / "out"
    reproduce(experiment, scale="smoke", out=out, seeds=1, print_fn=lambda _: None)
    # as if the process had been killed during epoch 2 of relu: its checkpoint after epoch 1 is on disk
    run_dir = out / "runs" / "relu-seed0"
    first = json.loads((run_dir / "reproduce.json").read_text())["history"]
    (run_dir / "reproduce.json").unlink()
    classicnets.train({**experiment.settings("relu", "smoke"), "seed": 0, "epochs": 1, "out": str(run_dir),
                       "overwrite": True, "progress": False})
    lines = []
    results = reproduce(experiment, scale="smoke", out=out, seeds=1, print_fn=lines.append)
    resumed = results["runs"][0]["history"]
    assert len(resumed) == 2 and resumed[0]["train_loss"] == first[0]["train_loss"]
    assert resumed[1]["train_loss"] == first[1]["train_loss"]  # exact resume: the same second epoch
    assert any("relu, seed 0" in line and "[1/2]" in line for line in lines)
    assert any("tanh, seed 0: done before, kept" in line for line in lines)


def test_runner_refuses_a_folder_that_holds_another_experiment(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps({"experiment": "paper-ablations", "scale": "cpu"}))
    with pytest.raises(ExperimentError, match="holds the results of paper-ablations"):
        reproduce(parse_experiment(tiny_spec()), scale="smoke", out=out)


def test_a_diverged_run_is_recorded_and_reported(tmp_path, monkeypatch):
    import classicnets.experiment as wiring
    from classicnets.training.loop import NonFiniteLossError

    train = wiring.train

    def diverging_tanh(config):
        if config["model_options"]["activation"] == "tanh":
            raise NonFiniteLossError("the loss became nan at epoch 1, step 3")
        return train(config)

    monkeypatch.setattr(wiring, "train", diverging_tanh)
    results = reproduce(parse_experiment(tiny_spec(epochs=1)), scale="smoke", out=tmp_path / "o", seeds=1,
                        print_fn=lambda _: None)
    statuses = {r["run"]: r["status"] for r in results["runs"]}
    assert statuses == {"relu": "done", "tanh": "diverged"}
    assert results["claims"][0]["verdict"] == cl.NO_DATA
    assert "tanh seed 0: diverged" in (tmp_path / "o" / "report.md").read_text()


# ----------------------------------------------------------------------------- shipped, at smoke scale


@pytest.mark.slow
@pytest.mark.parametrize("name", ["d2l-alexnet", "paper-relu-tanh", "paper-ablations"])
def test_shipped_experiment_at_smoke_scale(name, fashion_mnist_dir, tmp_path, capsys):
    out = tmp_path / name
    args = ["reproduce", name, "--scale", "smoke", "--out", str(out), "--data-dir", str(fashion_mnist_dir)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {r["status"] for r in results["runs"]} <= {"done", "skipped"}
    assert all(c["verdict"] for c in results["claims"]) and (out / "report.md").exists()
    verdicts = {cl.REPRODUCED, cl.NOT_REPRODUCED, cl.INCONCLUSIVE, cl.NOT_AT_SCALE,
                cl.NO_DATA}
    assert {c["verdict"] for c in results["claims"]} <= verdicts
    capsys.readouterr()
    assert main(args) == 0  # a second invocation trains nothing
    assert "settings" not in capsys.readouterr().out
