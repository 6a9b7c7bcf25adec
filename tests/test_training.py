"""Models trained on real data reach stated accuracies; resume equals an uninterrupted run."""

import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cnnlab import pipeline
from cnnlab.config import RunConfig, TrainConfig, with_overrides
from cnnlab.data.batches import InMemoryBatches, Normalization
from cnnlab.errors import CnnlabError, TrainingInterrupted
from cnnlab.explain.run import EXPLAIN_LARGE_IMAGES, EXPLAIN_SECONDS, EXPLAIN_SMALL_IMAGES
from cnnlab.models.checkpoint import Checkpoint, InputSpec, load_checkpoint
from cnnlab.pipeline import resume, train
from cnnlab.training import runner
from cnnlab.training.budget import BudgetPlan, plan_budget
from cnnlab.training.clock import BudgetClock
from cnnlab.training.fit import build_scheduler
from cnnlab.training.progressive import epochs_that_fit, side_for
from helpers import needs_fashion


def _cfg(source, model, epochs, **train_kw):
    cfg = with_overrides(RunConfig(), "data", source=source)
    cfg = with_overrides(cfg, "model", name=model)
    return with_overrides(cfg, "train", epochs=epochs, **train_kw)


def _quiet(_):
    pass


def test_mlp_on_digits_beats_90_percent(tmp_path):
    result = train(_cfg("digits", "mlp", 10), runs_dir=tmp_path, name="m", log=_quiet, report=False)
    assert result.evaluation["accuracy"] >= 0.90


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    """`--devices 2` on the CPU (gloo): same global batches, gradients averaged; only rank 0 writes.

    The tolerance is what the arithmetic allows: in fp32, without dropout (each rank would draw its own masks)
    or batch norm (each rank would normalise by its own half-batch statistics), the two runs differ only in
    the order gloo sums gradients, about 1e-7 relative per step; over 5 epochs the weights moved apart by
    1.5e-6 and the losses agreed to all 6 printed digits. 1e-4 leaves room for other CPUs' summation order."""
    cnnlab = str(Path(sys.executable).parent / "cnnlab")
    model = ["--model", "cnn", "--model-option", "dropout=0", "--model-option", "batch_norm=false"]
    common = ["train", "--data", "digits", *model, "--epochs", "5", "--augment", "none", "--precision", "32-true",
              "--no-report"]  # fmt: skip
    runs = {}
    for name, extra in (("one", []), ("two", ["--devices", "2"])):
        done = subprocess.run(
            [cnnlab, *common, *extra, "--runs-dir", str(tmp_path), "--name", name],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        with (tmp_path / name / "metrics.csv").open() as fh:
            runs[name] = list(csv.DictReader(fh))
        runs[name + "_acc"] = float(done.stdout.split("Test Accuracy (Overall): ")[1].split("%")[0])
    assert "x 2 processes (DDP)" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == ["one", "two"]
    assert [r["epoch"] for r in runs["two"]] == ["1", "2", "3", "4", "5"]  # one writer, no duplicate rows
    for a, b in zip(runs["one"], runs["two"], strict=True):
        for column in ("train_loss", "valid_loss"):
            assert float(a[column]) == pytest.approx(float(b[column]), rel=1e-4), (a["epoch"], column)
    one, two = (load_checkpoint(tmp_path / n / "best.pt").weights for n in ("one", "two"))
    assert max(float((one[k] - two[k]).abs().max()) for k in one) <= 1e-4
    assert abs(runs["one_acc"] - runs["two_acc"]) <= 100 / 359 + 1e-9  # at most one of 359 test images


def test_batch_norm_is_synchronised_across_gpu_processes_and_said_to_stay_per_process_on_cpus():
    """Under DDP on GPUs every batch-norm layer (timm's fused BatchNormAct2d too, keeping its activation) becomes a
    synchronised one; CPU processes cannot synchronise (PyTorch's SyncBatchNorm takes GPU tensors), and the run says
    what each process normalises by; one process, or a model without batch norm, is left as it is."""
    from cnnlab.models import create_model

    lite = create_model("efficientnet_lite0", num_classes=3, in_channels=3, image_size=32, strategy="fine-tune")
    gpus = SimpleNamespace(world_size=2, device=torch.device("cuda", 0))
    synced, why = runner._synced_batch_norm(lite, gpus, 64)
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms) and "SyncBatchNorm" in why
    x = torch.randn(2, 3, 32, 32)
    fresh = create_model("efficientnet_lite0", num_classes=3, in_channels=3, image_size=32, strategy="fine-tune")
    fresh.load_state_dict(synced.state_dict())  # same weights, same names: checkpoints load into the plain model
    assert torch.allclose(fresh.eval()(x), synced.eval()(x), atol=1e-5)  # the fused activations were kept
    cnn = create_model("cnn", num_classes=3, in_channels=1, image_size=28)
    kept, why = runner._synced_batch_norm(cnn, SimpleNamespace(world_size=2, device=torch.device("cpu")), 64)
    assert kept is cnn and "each of the 2 CPU processes normalises its 32 images" in why
    assert runner._synced_batch_norm(cnn, SimpleNamespace(world_size=1, device=torch.device("cpu")), 64)[1] is None
    plain = create_model("cnn", num_classes=3, in_channels=1, image_size=28, options={"batch_norm": False})
    assert runner._synced_batch_norm(plain, gpus, 64) == (plain, None)


def test_budget_plans_the_epochs_and_records_them(tmp_path):
    """--budget-minutes replaces --epochs by a measured plan; the run folder says what was planned."""
    lines = []
    cfg = _cfg("digits", "mlp", 1, budget_minutes=0.05)
    result = train(cfg, runs_dir=tmp_path, name="b", log=lines.append, report=False)
    assert any(line.startswith("budget 0.05 min: about") for line in lines)
    epochs = len(result.history)  # as planned, or re-planned after the second epoch (the next test)
    saved = (tmp_path / "b" / "config.yaml").read_text()
    assert f"epochs: {epochs}\n" in saved and "budget_minutes: 0.05" in saved
    assert load_checkpoint(tmp_path / "b" / "last.pt").config["train"]["epochs"] == epochs


def test_a_plan_too_long_for_the_budget_is_cut_to_fit_and_the_schedule_still_ends(tmp_path, monkeypatch):
    """The probe can misjudge sustained speed (a 30-minute plan overran by 4.5 minutes): made to plan 500 epochs
    for a 3-second budget, training re-plans after its second epoch, the one-cycle rate still anneals to its end,
    and config.yaml, last.pt and metrics.csv agree on the new plan."""
    monkeypatch.setattr(runner, "plan_budget", lambda t, *a, **k: BudgetPlan(replace(t, epochs=500), 0.0))
    lines = []
    result = train(_cfg("digits", "mlp", 1, budget_minutes=0.05), runs_dir=tmp_path, name="b", log=lines.append,
                   report=False)  # fmt: skip
    assert any(line.startswith("budget: epochs take") and "not 500" in line for line in lines)
    epochs = len(result.history)
    assert 2 <= epochs < 500
    assert f"epochs: {epochs}\n" in (tmp_path / "b" / "config.yaml").read_text()
    last = load_checkpoint(tmp_path / "b" / "last.pt")
    assert last.epoch == epochs and last.config["train"]["epochs"] == epochs
    rows = _metric_rows(tmp_path / "b")
    assert len(rows) == epochs and float(rows[-1]["lr"]) < 0.01 * 0.003  # annealed (500 epochs: ~peak)


def test_a_flip_decision_after_a_re_plan_keeps_the_new_epochs_in_the_checkpoints():
    """A folder's flips are decided during training and rewrite the checkpoints' config; a budget re-plan made
    before that decision must survive it (resume reads the plan from last.pt)."""
    cfg = with_overrides(_cfg("folder:unused", "simple_cnn_bn", 35), "data", flips=None)
    meta = Checkpoint("simple_cnn_bn", ["a", "b"], InputSpec(8, 1, [0.5], [0.25]), cfg.to_dict())
    decided = {}
    check = runner._flip_check(cfg, SimpleNamespace(class_names=["a", "b"]), meta, decided, log=_quiet)
    meta.config["train"]["epochs"] = 37  # what fit does on a re-plan
    check.decide(epoch=3, accuracy=0.9, mirrored=0.9)
    assert decided["flips"][0] is True and meta.config["data"]["flips"] is True
    assert meta.config["train"]["epochs"] == 37 and "flips" in meta.config["decisions"]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_rebuilt_schedule_equals_one_built_for_the_new_length(schedule):
    """A re-plan rebuilds the schedule for the new epoch count at the step reached: the rate is then the one a
    schedule of that length from the start would give, from the original peak (not the rate reached)."""
    cfg = TrainConfig(schedule=schedule, lr=0.1, epochs=10)

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)

    first = optimizer()
    scheduler = build_scheduler(first, cfg, steps_per_epoch=5)
    for _ in range(15):
        first.step()
        scheduler.step()
    rebuilt = build_scheduler(first, replace(cfg, epochs=6), steps_per_epoch=5, steps_done=15)
    fresh_optimizer = optimizer()
    fresh = build_scheduler(fresh_optimizer, replace(cfg, epochs=6), steps_per_epoch=5)
    for _ in range(15):
        fresh_optimizer.step()
        fresh.step()
    assert rebuilt.get_last_lr() == pytest.approx(fresh.get_last_lr())
    assert first.param_groups[0]["lr"] == pytest.approx(fresh_optimizer.param_groups[0]["lr"])


def test_the_budget_is_the_whole_commands(tmp_path, monkeypatch):
    """--budget-minutes bounds the command, not only training: the time spent loading and planning comes off it,
    and the work after training is kept back (both splits scored, twice where test-time flips may be on, and
    explain's sample when the report is written)."""
    seen = {}

    def spy(t, *args, **kwargs):
        seen.update(kwargs)
        return plan_budget(t, *args, **kwargs)

    monkeypatch.setattr(runner, "plan_budget", spy)
    lines = []
    train(_cfg("digits", "mlp", 1, budget_minutes=0.05), runs_dir=tmp_path, name="w", log=lines.append, report=False)
    splits = json.loads((tmp_path / "w" / "splits.json").read_text())
    valid, test = len(splits["valid"]), len(splits["test"])
    assert seen["after"] == pytest.approx(((valid + test) / valid, 0.0))  # digits: flips change labels, one view
    assert seen["seconds"] < 3  # loading and planning were spent from the 3 s
    assert any(line.startswith("budget 0.05 min:") and "kept for evaluation" in line for line in lines)
    undecided = with_overrides(RunConfig(), "data", flips=None)  # a folder: flips measured while training
    splits = {"valid": [0] * 100, "test": [0] * 50}
    small = SimpleNamespace(image_size=28)
    assert pipeline._after_training(undecided, splits, source=small, report=True, explain=True) == (
        (300 + EXPLAIN_SMALL_IMAGES) / 100, EXPLAIN_SECONDS,
    )  # fmt: skip
    assert pipeline._after_training(undecided, splits, source=small, report=False, explain=True) == (3.0, 0.0)
    # a backbone computes at 224 px whatever the images' size: explain takes fewer, larger images
    backbone = with_overrides(undecided, "model", name="efficientnet_lite0")
    assert pipeline._after_training(backbone, splits, source=small, report=True, explain=True)[0] == (
        (300 + EXPLAIN_LARGE_IMAGES) / 100
    )  # fmt: skip
    # at its least (an ensemble's check: explaining takes what is left), the pictures' 8 of the default's 24 images
    assert pipeline._after_training(backbone, splits, True, source=small, report=True, explain=True)[0] == (
        (300 + EXPLAIN_LARGE_IMAGES * 8 // 24) / 100
    )  # fmt: skip
    asked = with_overrides(backbone, "model", options={"input_size": 48})  # --image-size 48: explained as small
    assert pipeline._after_training(asked, splits, source=small, report=True, explain=True)[0] == (
        (300 + EXPLAIN_SMALL_IMAGES) / 100
    )  # fmt: skip


def test_the_budget_clock_fits_the_epochs_left_and_always_ends_the_schedule():
    clock = BudgetClock(deadline=time.perf_counter() + 105, epochs=10)
    assert clock.replan(5, [90.0, 30.0, 10.0, 10.0, 10.0]) == 15  # the mean of the last three (10 s): 10 more fit
    assert clock.replan(1, [90.0]) == 15  # one epoch timed (it pays one-off costs): the plan stands
    near = BudgetClock(deadline=time.perf_counter() + 56, epochs=11)
    assert near.replan(5, [10.0] * 5) == 11  # 6 epochs of 10 s in 56 s: 4 s late, less than half an epoch: stands
    late = BudgetClock(deadline=time.perf_counter() - 1, epochs=10)
    assert late.replan(4, [1.0] * 4) == 5  # past the deadline: one more epoch, so the rate still anneals
    assert BudgetClock(deadline=time.perf_counter() + 1e4, epochs=10, most=12).replan(2, [1.0] * 2) == 12
    assert BudgetClock(deadline=time.perf_counter() + 1e4, epochs=10).replan(10, [1.0] * 10) == 10  # done


def test_progressive_resizing_trains_the_first_thirds_smaller_and_fits_more_epochs():
    assert [side_for(e, 9, 28) for e in range(1, 10)] == [20, 20, 20, 24, 24, 24, 28, 28, 28]
    # 6 epochs at 20, 20, 24, 24, 28, 28 px cost 2 (20/28)^2 + 2 (24/28)^2 + 2 = 4.49 full-size epochs; 7 cost 5.00
    assert epochs_that_fit(45, 10, progressive_size=28) == 6 and epochs_that_fit(50.1, 10, progressive_size=28) == 7
    assert epochs_that_fit(45, 10) == 4  # full size throughout
    # after 5 done: 7 in all puts epochs 6-7 at 28 px (20 s); 8 in all moves epoch 6 to 24 px but costs 27.3 s
    assert epochs_that_fit(25, 10, progressive_size=28, done=5) == 7
    # the clock re-plans with the same costs: epochs 3-7 of 7 cost 3.98 full-size epochs of 10 s, 8 would cost 4.71
    clock = BudgetClock(deadline=time.perf_counter() + 45, epochs=3, progressive_size=28)
    assert clock.replan(2, [10.0, 10.0]) == 7
    assert BudgetClock(deadline=time.perf_counter() + 45, epochs=3).replan(2, [10.0, 10.0]) == 6
    images, labels = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8), torch.arange(8)
    batches = InMemoryBatches(images, labels, np.arange(8), batch_size=4, norm=Normalization((0.5,), (0.25,)))
    batches.set_side(20)
    assert [(tuple(x.shape), y.tolist()) for x, y in batches] == [((4, 1, 20, 20), [0, 1, 2, 3]),
                                                                  ((4, 1, 20, 20), [4, 5, 6, 7])]  # fmt: skip
    batches.set_side(None)
    assert next(iter(batches))[0].shape[-1] == 28


def test_progressive_training_follows_the_sides_and_a_model_that_cannot_is_refused(tmp_path, monkeypatch):
    sides = []
    set_side = InMemoryBatches.set_side
    monkeypatch.setattr(InMemoryBatches, "set_side", lambda self, side: (sides.append(side), set_side(self, side)))
    result = train(_cfg("digits", "resnet_small", 3, progressive=True), runs_dir=tmp_path, name="p", log=_quiet,
                   report=False)  # fmt: skip
    assert sides == [6, 7, 8]  # 5/7, 6/7 and all of the digits' 8 px, validation at 8 px throughout
    assert result.evaluation["accuracy"] >= 0.8
    assert "progressive: true" in (tmp_path / "p" / "config.yaml").read_text()
    with pytest.raises(CnnlabError, match="--progressive trains on 6-px images, but simple_cnn_bn only takes 8 px"):
        train(_cfg("digits", "simple_cnn_bn", 1, progressive=True), runs_dir=tmp_path, name="q", log=_quiet)
    assert not (tmp_path / "q").exists()  # nothing left behind


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path):
    """--compile trains the same model (losses agree), and best.pt loads into the uncompiled architecture."""
    runs = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        cfg = _cfg("digits", "mlp", 3, compile=compiled)
        runs[name] = train(cfg, runs_dir=tmp_path, name=name, log=_quiet, report=False)
    for a, b in zip(runs["eager"].history, runs["compiled"].history, strict=True):
        assert abs(a.train_loss - b.train_loss) <= 0.02 * a.train_loss + 1e-3
    accuracy = {name: run.evaluation["accuracy"] for name, run in runs.items()}
    assert accuracy["compiled"] >= 0.85 and abs(accuracy["compiled"] - accuracy["eager"]) <= 0.02
    saved = load_checkpoint(tmp_path / "compiled" / "best.pt")
    assert not any(k.startswith("_orig_mod") for k in saved.weights)
    assert saved.config["train"]["compile"] is True


@pytest.mark.slow
@needs_fashion
def test_default_model_reaches_88_percent_on_fashion_mnist_in_two_epochs(tmp_path):
    result = train(_cfg("fashion-mnist", "simple_cnn_bn", 2), runs_dir=tmp_path, name="d", log=_quiet, report=False)
    assert result.evaluation["n_test"] == 10000
    assert result.evaluation["accuracy"] >= 0.88


@pytest.mark.slow
@needs_fashion
@pytest.mark.parametrize("model", ["simple_cnn", "mlp"])
def test_course_models_clearly_learn_fashion_mnist(tmp_path, model):
    result = train(_cfg("fashion-mnist", model, 2), runs_dir=tmp_path, name=model, log=_quiet, report=False)
    assert result.evaluation["accuracy"] >= 0.80


def _metric_rows(run_dir):
    with (run_dir / "metrics.csv").open() as fh:
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in csv.DictReader(fh)]


def test_resume_equals_uninterrupted_run(tmp_path):
    # dropout, batch norm and augmentation all draw random numbers: the strictest case
    cfg = _cfg("digits", "simple_cnn_bn", 4)
    full = train(cfg, runs_dir=tmp_path, name="full", log=_quiet, report=False).run_dir

    def stop_after_epoch_2(line):
        if line.startswith("epoch   2/"):
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="last.pt holds epoch 2"):  # Ctrl-C while the epoch is logged
        train(cfg, runs_dir=tmp_path, name="cut", log=stop_after_epoch_2, report=False)
    cut = tmp_path / "cut"
    assert load_checkpoint(cut / "last.pt").epoch == 2 and len(_metric_rows(cut)) == 2
    resume(cut, log=_quiet)
    assert _metric_rows(cut) == _metric_rows(full)
    a, b = load_checkpoint(full / "best.pt").weights, load_checkpoint(cut / "best.pt").weights
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_ctrl_c_leaves_a_loadable_last_checkpoint(tmp_path):
    cmd = [sys.executable, "-m", "cnnlab.cli", "train", "--data", "digits", "--model", "mlp", "--epochs", "500",
           "--runs-dir", str(tmp_path), "--name", "long", "--precision", "32-true"]  # fmt: skip
    # a shell that started us in the background leaves SIGINT ignored, and children inherit that: restore it
    restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=restore)
    last = tmp_path / "long" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("error: interrupted in epoch") and "cnnlab train --resume" in err
    ckpt = load_checkpoint(last)
    assert 1 <= ckpt.epoch < 500


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_stderr_holds_only_cnnlab_lines_whatever_the_precision(tmp_path, precision):
    """Lightning's AMP banner never reaches the terminal: a bf16 run (native or emulated, whatever this CPU is)
    and an fp32 run print the same kind of stderr, so scripts reading it do not depend on the machine."""
    cmd = [sys.executable, "-m", "cnnlab.cli", "train", "--data", "digits", "--model", "mlp", "--epochs", "1",
           "--runs-dir", str(tmp_path), "--name", "p", "--precision", precision, "--no-report"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-800:]
    assert "Automatic Mixed Precision" not in done.stderr + done.stdout
    assert "Test Accuracy (Overall)" in done.stdout


def test_larger_recipe_file_loads_and_its_residual_net_learns_digits(tmp_path):
    """recipes/fashion-large.yaml is a valid config; its model and optimiser learn real digits."""
    from cnnlab.config import load_config

    cfg = load_config(Path(__file__).parents[1] / "recipes" / "fashion-large.yaml")
    assert (cfg.model.name, cfg.train.optimizer, cfg.train.label_smoothing) == ("resnet_small", "sgd", 0.1)
    cfg = with_overrides(with_overrides(cfg, "data", source="digits"), "train", epochs=6, batch_size=64)
    result = train(cfg, runs_dir=tmp_path, name="large", log=_quiet, report=False)
    assert result.evaluation["accuracy"] >= 0.90
