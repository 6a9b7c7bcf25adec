"""`--model auto`, the default for folders: the photo folders of ../shared/data get the pretrained backbone, many
small grey images the from-scratch CNN, few small images a measured choice; a named model is kept."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.config import RunConfig, TrainConfig, with_overrides
from cnnlab.data.idx import read_idx
from cnnlab.data.sources import load_source
from cnnlab.errors import CnnlabError
from cnnlab.models import create_model
from cnnlab.pipeline import resume, train
from cnnlab.runs import open_run
from cnnlab.training import auto, transfer
from cnnlab.training.budget import BudgetTooSmall, plan_budget
from cnnlab.training.fit import make_fabric
from cnnlab.training.plan import check_request, plan_run
from helpers import FASHION_DIR, needs_fashion, write_digit_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_photos = pytest.mark.skipif(not (SHARED / "caltech12").is_dir(), reason="../shared/data photo folders absent")


def _folder(path: Path, root: Path, **model) -> RunConfig:
    cfg = with_overrides(RunConfig(), "data", source=f"folder:{path}", root=str(root))
    return with_overrides(cfg, "model", **model)


@needs_photos
def test_a_photo_folder_is_searched_at_the_backbone_size_and_a_named_model_is_kept(tmp_path):
    cfg = check_request(_folder(SHARED / "caltech12", tmp_path), log=lambda _: None)
    assert cfg.model.name == "auto"  # measured once the data is read
    assert cfg.data.image_size == 224  # decoded as the backbone was trained, not at the scratch CNN's 64 px
    kept = check_request(_folder(SHARED / "caltech12", tmp_path, name="mlp"), log=lambda _: None)
    assert kept.model.name == "mlp" and "model" not in kept.decisions
    forced = check_request(_folder(SHARED / "caltech12", tmp_path, strategy="fine-tune"), log=lambda _: None)
    assert forced.model.name == "efficientnet_lite0" and forced.model.strategy == "fine-tune"


def test_a_named_dataset_keeps_the_course_cnn():
    assert check_request(RunConfig(), log=lambda _: None).model.name == "simple_cnn_bn"  # `make demo` unchanged


@needs_fashion
def test_many_small_grey_images_get_the_from_scratch_cnn(tmp_path):
    images = read_idx(FASHION_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_DIR / "train-labels-idx1-ubyte.gz")
    for cls in (0, 1):
        (tmp_path / "f" / str(cls)).mkdir(parents=True)
        for i in np.flatnonzero(labels == cls)[:1000]:
            Image.fromarray(images[i]).save(tmp_path / "f" / str(cls) / f"{i}.png")
    cfg = check_request(_folder(tmp_path / "f", tmp_path / "root"), log=lambda _: None)
    assert cfg.model.name == "simple_cnn_bn" and "1000 small images per class" in cfg.decisions["model"]


def test_few_small_images_are_searched_cross_validated_and_the_best_kept(tmp_path):
    """Real 8-px digits, 40 per class (9 validation images per class): the backbone's frozen candidates are
    cross-validated (the split is too small to rank on), the from-scratch CNN and fine-tuning are trained within
    the budget or skipped with a reason; the table and the reason are in config.yaml, and the kept model is the
    best by validation accuracy (ties: frozen, then scratch, then fine-tuned)."""
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1, 7), per_class=40, size=8)
    lines = []
    # 2 minutes: the scratch candidate gets half of what the frozen ones leave, with room for a loaded machine
    cfg = with_overrides(_folder(folder, tmp_path / "root"), "train", budget_minutes=2.0)
    result = train(cfg, runs_dir=tmp_path / "runs", name="auto", report=False, log=lines.append)
    saved = open_run(result.run_dir)
    rows = {row["candidate"].split(",")[0].split(" (")[0]: row for row in saved.model.strategy_candidates}
    frozen = [row for row in saved.model.strategy_candidates if "frozen" in row["candidate"]]
    assert len(frozen) == 5 and all(row["cv_accuracy"] is not None for row in frozen)  # cross-validated
    assert "simple_cnn_bn" in rows and "efficientnet_lite0 fine-tuned" in rows
    assert rows["simple_cnn_bn"]["seconds"] > 0 and rows["efficientnet_lite0 fine-tuned"]["status"].startswith("skip")
    for row in saved.model.strategy_candidates:
        assert row["status"] in ("chosen", "measured") or row["status"].startswith("skipped: ")
    (chosen,) = [row for row in saved.model.strategy_candidates if row["status"] == "chosen"]
    compared = [row for row in saved.model.strategy_candidates if "valid_score" in row]  # one row per family
    assert len(compared) == 2  # the frozen family's chosen candidate and the from-scratch CNN, on the same images
    top = min(row["valid_score"] for row in compared)  # log loss: lower is better
    assert chosen["valid_score"] <= top + chosen["tie_margin"]
    assert "lowest validation log loss of 2 candidates on the same" in saved.decisions["model"]
    assert any(line.strip().startswith("candidate") for line in lines) and result.evaluation["accuracy"] > 0.9


def test_a_budget_too_small_for_fine_tuning_skips_it_and_says_why(tmp_path):
    """Tiny photos-sized images (the backbone path) with a 3-second budget: the frozen candidates are measured
    (they come first and cost one pass), fine-tuning is skipped with the reason printed, a frozen head is kept."""
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=30, size=112)
    lines = []
    cfg = with_overrides(_folder(folder, tmp_path / "root"), "train", budget_minutes=0.05)
    result = train(cfg, runs_dir=tmp_path / "runs", name="b", report=False, log=lines.append)
    saved = open_run(result.run_dir)
    (tuned,) = [row for row in saved.model.strategy_candidates if "fine-tuned" in row["candidate"]]
    assert tuned["status"].startswith("skipped: the budget is spent") and tuned["valid_accuracy"] is None
    assert any("skipped: the budget is spent" in line for line in lines)
    assert saved.model.strategy in ("feature-extract", "truncate") and result.evaluation["accuracy"] > 0.8
    lines.clear()  # resume follows the saved plan: no second search
    with pytest.raises(CnnlabError, match="nothing to resume"):
        resume(result.run_dir, log=lines.append)
    assert not any("model: auto" in line for line in lines)


def test_fine_tuning_that_cannot_fit_even_at_the_frozen_pass_speed_is_skipped_unmeasured(tmp_path, monkeypatch):
    """Large data: three epochs of fine-tuning cost at least TRAIN_OVER_INFERENCE frozen passes per training image;
    when even that does not fit what is left, the candidate is skipped before its precision and steps are timed
    (a minute of a 5-minute budget on 10,000 photos), and the table says why."""
    monkeypatch.setattr(auto, "TRAIN_OVER_INFERENCE", 10**6)  # as if the training split were huge
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=30, size=112)
    lines = []
    cfg = with_overrides(_folder(folder, tmp_path / "root"), "train", budget_minutes=1.0)
    result = train(cfg, runs_dir=tmp_path / "runs", name="b", report=False, log=lines.append)
    (tuned,) = [row for row in open_run(result.run_dir).model.strategy_candidates if "fine-tuned" in row["candidate"]]
    assert tuned["status"].startswith("skipped: 3 epochs need at least") and "frozen pass's" in tuned["status"]
    assert not any(line.startswith("candidate: efficientnet_lite0 fine-tuned") for line in lines)  # never started


def test_the_search_is_spent_from_the_command_start_and_keeps_back_what_follows_training(tmp_path):
    """The folder search bounds the whole command: a trained candidate keeps back the work after training that
    `after` estimates for it (scoring, explaining for the report; here 10,000 validation passes, more than the
    budget holds), so fine-tuning is skipped and says what was kept; and what the command spent before the search
    (loading: here a start 10 minutes back) comes off the budget too."""
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=30, size=112)
    for i in range(0, 30, 3):  # every third image swapped to the other label: no frozen candidate reaches 100% on
        a, b = folder / "digit0" / f"{i:03d}.png", folder / "digit1" / f"{i:03d}.png"  # validation (that alone
        a.rename(folder / "swap.png")  # would skip fine-tuning)
        b.rename(a)
        (folder / "swap.png").rename(b)
    cfg = check_request(with_overrides(_folder(folder, tmp_path / "root"), "train", budget_minutes=2.0),
                        log=lambda _: None)  # fmt: skip
    source, asked = load_source(cfg.data), []

    def after(config: RunConfig, splits, least: bool = False) -> tuple[float, float]:
        asked.append((config.model.strategy, len(splits["valid"])))
        return 1e4, 0.0

    def fine_tune_row(**budget) -> tuple[dict, int]:
        plan = plan_run(cfg, source, measure=True, audit=False, log=lambda _: None, **budget)
        (row,) = [r for r in plan.config.model.strategy_candidates if "fine-tuned" in r["candidate"]]
        assert plan.config.model.strategy in ("feature-extract", "truncate") and plan.trained is None
        return row, len(plan.splits["valid"])

    kept, n_valid = fine_tune_row(after=after)
    assert asked == [("fine-tune", n_valid)] and kept["valid_accuracy"] is None
    assert kept["status"].startswith("skipped: 3 epochs need about") and "kept for evaluation and the report" in \
        kept["status"]  # fmt: skip
    late, _ = fine_tune_row(budget_start=time.perf_counter() - 600)
    assert late["status"].startswith("skipped: the budget is spent")


def test_budget_probe_refuses_a_candidate_that_cannot_run_its_least_epochs():
    """The cost of a candidate is measured on a few steps before it runs; too few epochs fit: BudgetTooSmall."""
    model = create_model("mlp", num_classes=2, in_channels=1, image_size=8, options={})
    batches = [(torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,)))] * 12
    t = TrainConfig(budget_minutes=1e-4, precision="32-true")
    with pytest.raises(BudgetTooSmall, match=r"3 epochs need about .* s left of the budget"):
        plan_budget(t, make_fabric(t), model, batches, batches[:1], lambda _: None, epoch_limits=(3, 12))
    planned = plan_budget(replace(t, budget_minutes=10.0), make_fabric(t), model, batches, batches[:1],
                          lambda _: None, epoch_limits=(3, 12))  # fmt: skip
    assert planned.train.epochs == 12 and planned.kept_s == 0  # capped at the most; nothing kept back


class _CountedBatches(list):
    """Batches that count how many the budget probe draws (its steps are thrown away)."""

    drawn = 0

    def __iter__(self):
        for batch in super().__iter__():
            self.drawn += 1
            yield batch


@pytest.mark.parametrize(("steps_per_epoch", "drawn"), [(8, 4 + 2), (6, 3 + 2), (40, 8 + 2)])
def test_the_budget_probe_takes_at_most_half_an_epoch_of_steps(steps_per_epoch, drawn):
    """On a small folder the probe's throwaway steps were more than an epoch of fine-tuning (8 + 2 warm-up of 8)."""
    model = create_model("mlp", num_classes=2, in_channels=1, image_size=8, options={})
    batches = _CountedBatches([(torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,)))] * steps_per_epoch)
    t = TrainConfig(budget_minutes=1.0, precision="32-true")
    plan_budget(t, make_fabric(t), model, batches, batches[:1], lambda _: None)
    assert batches.drawn == drawn


def test_a_dry_run_does_not_measure_and_takes_the_scratch_cnn(tmp_path):
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=20, size=8)
    lines = []
    train(_folder(folder, tmp_path / "root"), dry_run=True, log=lines.append)
    assert any("not measured (dry run" in line for line in lines)


@pytest.mark.slow
@needs_photos
def test_the_default_on_a_real_photo_folder_beats_the_old_scratch_default(tmp_path):
    """Caltech-101, 12 classes x 80 photos, default flags: the old from-scratch default scored about 62% on such
    folders; the frozen backbone's head scores above 90% on the test split (measured 99.5%)."""
    result = train(_folder(SHARED / "caltech12", tmp_path / "root"), runs_dir=tmp_path / "runs", name="c",
                   report=False, log=lambda _: None)  # fmt: skip
    saved = open_run(result.run_dir)
    assert saved.model.name == "efficientnet_lite0" and result.evaluation["accuracy"] > 0.9
    (chosen,) = [row for row in saved.model.strategy_candidates if row["status"] == "chosen"]
    assert "efficientnet_lite0" in chosen["candidate"]


@pytest.mark.slow
@needs_photos
def test_the_search_on_large_data_measures_the_frozen_candidates(tmp_path, monkeypatch):
    """Large data (here: caltech12 with the threshold lowered to 10 photos per class) takes the matrix's fine-tune
    prior when the strategy is resolved alone; the search measures the frozen candidates anyway (a 100,000-photo
    folder crashed on an empty candidate table when fine-tuning did not fit the budget)."""
    monkeypatch.setattr(transfer, "SMALL_PER_CLASS", 10)
    cfg = with_overrides(_folder(SHARED / "caltech12", tmp_path / "root"), "train", budget_minutes=1.0)
    result = train(cfg, runs_dir=tmp_path / "runs", name="c", report=False, log=lambda _: None)
    saved = open_run(result.run_dir)
    frozen = [row for row in saved.model.strategy_candidates if "frozen" in row["candidate"]]
    assert len(frozen) >= 3 and all(row["valid_accuracy"] is not None for row in frozen)
    assert result.evaluation["accuracy"] > 0.9


def test_ctrl_c_during_the_search_leaves_nothing_behind(tmp_path, monkeypatch):
    """Interrupted while a candidate trains: one line saying nothing was saved, no candidate folder left in the
    temporary directory, no run folder."""
    import tempfile

    import cnnlab.training.auto as auto
    from cnnlab.errors import TrainingInterrupted

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def interrupted(config, fabric, source, splits, folder, **_):
        (folder / "last.pt").write_bytes(b"half an epoch")
        raise TrainingInterrupted("interrupted in epoch 1")

    monkeypatch.setattr(auto, "train_model", interrupted)
    folder = write_digit_folder(tmp_path / "digits", classes=(0, 1, 7), per_class=40, size=8)
    with pytest.raises(TrainingInterrupted, match="during the model search; nothing was saved"):
        train(_folder(folder, tmp_path / "root"), runs_dir=tmp_path / "runs", name="x", log=lambda _: None)
    assert list((tmp_path / "tmp").iterdir()) == [] and not (tmp_path / "runs" / "x").exists()


@pytest.mark.parametrize("step_s, expected", [(1e-3, "resnet_small"), (10.0, "simple_cnn_bn")])
def test_a_long_budget_takes_the_larger_recipe_only_where_enough_epochs_fit(tmp_path, monkeypatch, step_s, expected):
    monkeypatch.setattr(auto, "step_seconds", lambda *a: step_s)  # the measured speed, fixed: any machine alike
    cfg = with_overrides(RunConfig(), "data", source="digits", root=str(tmp_path))
    cfg = with_overrides(cfg, "train", budget_minutes=20.0, lr=0.05)
    cfg = check_request(cfg, log=lambda _: None)
    assert cfg.model.name == "auto"  # decided once the data is read, by the measured speed
    lines: list[str] = []
    planned = plan_run(cfg, load_source(cfg.data), measure=True, audit=False, log=lines.append).config
    assert planned.model.name == expected
    said = next(line for line in lines if line.startswith("model: "))
    t = planned.train
    if expected == "resnet_small":  # the larger recipe's settings, except what the user set (--lr 0.05)
        assert "fit in 20 minutes" in said and t.optimizer == "sgd" and t.label_smoothing == 0.1
        assert t.batch_size == 256 and t.lr == 0.05
    else:  # too slow here for 30 epochs: the course CNN, with the reason
        assert "the larger recipe needs 30" in said and t.optimizer == "adamw" and t.label_smoothing == 0.0
    assert planned.decisions["model"] in said


@pytest.mark.parametrize("progressive, expected", [(None, "resnet_small"), (False, "simple_cnn_bn")])
def test_the_larger_recipe_counts_its_epochs_at_progressive_resizing_cost(tmp_path, monkeypatch, progressive,
                                                                           expected):  # fmt: skip
    """0.383 s per full-size step, 100 steps of 256 digits (8 px) plus a tenth for validation: 42.13 s per full-size
    epoch, so 28 fit 20 minutes at full size (under the 30 needed). Progressively resized by thirds at 6/7/8 px
    (0.602, 0.787 and 1 of a full-size epoch), 35 fit: 12 x 0.602 + 12 x 0.787 + 11 = 27.67 full-size epochs,
    1,166 s; 36 would take 1,208 s. The choice counts epochs as the budget's plan will."""
    monkeypatch.setattr(auto, "step_seconds", lambda *a: 0.383)
    cfg = with_overrides(with_overrides(RunConfig(), "data", source="digits", root=str(tmp_path)), "train",
                         budget_minutes=20.0, progressive=progressive, batch_size=256)  # fmt: skip
    lines: list[str] = []
    cfg = auto.recipe_for_budget(check_request(cfg, log=lambda _: None), load_source(cfg.data),
                                 {"train": np.arange(25_600)}, measure=True, log=lines.append)  # fmt: skip
    assert cfg.model.name == expected
    said = next(line for line in lines if line.startswith("model: "))
    if expected == "resnet_small":
        assert "35 epochs of resnet_small fit in 20 minutes" in said and "by thirds at 6/7/8 px" in said
    else:
        assert "only 28 epochs of resnet_small" in said


def test_the_five_minute_budget_keeps_the_course_cnn_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "step_seconds", lambda *a: pytest.fail("a short budget measures nothing"))
    cfg = with_overrides(RunConfig(), "data", source="digits", root=str(tmp_path))
    cfg = check_request(with_overrides(cfg, "train", budget_minutes=5.0), log=lambda _: None)
    assert cfg.model.name == "simple_cnn_bn" and "named dataset" in cfg.decisions["model"]


def test_a_long_budget_on_a_gpu_takes_the_larger_recipe_without_timing_cpu_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(auto, "accelerator_for", lambda t: "cuda")
    monkeypatch.setattr(auto, "step_seconds", lambda *a: pytest.fail("CPU steps say nothing of a GPU's speed"))
    cfg = check_request(with_overrides(with_overrides(RunConfig(), "data", source="digits", root=str(tmp_path)),
                                       "train", budget_minutes=20.0), log=lambda _: None)  # fmt: skip
    cfg = auto.recipe_for_budget(cfg, load_source(cfg.data), {"train": np.arange(1000)}, measure=True,
                                 log=lambda _: None)  # fmt: skip
    assert cfg.model.name == "resnet_small" and "CUDA GPU" in cfg.decisions["model"]
    assert cfg.train.progressive is True  # the recipe's progressive resizing; --no-progressive keeps it off:
    off = with_overrides(with_overrides(RunConfig(), "data", source="digits", root=str(tmp_path)), "train",
                         budget_minutes=20.0, progressive=False)  # fmt: skip
    off = auto.recipe_for_budget(check_request(off, log=lambda _: None), load_source(off.data),
                                 {"train": np.arange(1000)}, measure=True, log=lambda _: None)  # fmt: skip
    assert off.model.name == "resnet_small" and off.train.progressive is False


def test_the_larger_recipe_is_the_one_in_recipes_fashion_large_yaml():
    import yaml

    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "fashion-large.yaml").read_text())
    assert recipe["model"]["name"] == auto.LARGE_MODEL
    assert {k: recipe["train"][k] for k in auto.LARGE_RECIPE} == auto.LARGE_RECIPE


def _family_row(family: str, correct: list[bool], labels: np.ndarray, confidence: float = 0.9) -> auto.Row:
    """A measured candidate answering each validation image right or wrong (two classes), surely or less so."""
    probs = np.empty((len(labels), 2))
    for i, (ok, y) in enumerate(zip(correct, labels, strict=True)):
        probs[i, y if ok else 1 - y] = confidence
        probs[i, 1 - y if ok else y] = 1 - confidence
    return auto.Row(family, family, float(np.mean(correct)), config=RunConfig(), valid_probs=probs)


def test_a_lead_within_one_paired_standard_error_goes_to_the_cheaper_family():
    """30 validation images, every answer 0.9 sure (log loss 0.105 right, 2.303 wrong): fine-tuning right on one
    more image than the frozen head (it gains 4, loses 3) is a tie by log loss (0.073 nats against a paired standard
    error of 0.193, of which a trained candidate's lead needs two), so the frozen head is kept; right on eight more
    images, fine-tuning wins."""
    labels = np.array([0, 1] * 15)
    frozen = [True] * 25 + [False] * 5
    one_more = [True] * 22 + [False] * 3 + [True] * 4 + [False]
    loss = {True: -np.log(0.9), False: -np.log(0.1)}
    differences = np.array([loss[a] - loss[b] for a, b in zip(one_more, frozen, strict=True)])  # top minus other
    margin = differences.std() / np.sqrt(30)  # 0.193
    rows = [_family_row("frozen", frozen, labels), _family_row("fine-tune", one_more, labels)]
    assert auto._pick(rows, labels, None).family == "frozen"
    assert rows[0].margin == pytest.approx(auto.TRAINED_LEAD * margin) and margin > 0.15  # a trained lead: two
    assert rows[0].valid_score == pytest.approx((25 * loss[True] + 5 * loss[False]) / 30)  # 0.4714
    assert rows[0].valid_score - rows[1].valid_score == pytest.approx((loss[False] - loss[True]) / 30)  # 0.073
    rows = [_family_row("frozen", [True] * 22 + [False] * 8, labels), _family_row("fine-tune", [True] * 30, labels)]
    assert auto._pick(rows, labels, None).family == "fine-tune"


def test_log_loss_separates_candidates_that_accuracy_ties():
    """Both right on the same 120 of 128 images (blood cells' validation size): by accuracy a tie; the fine-tuned
    net is surer where right (0.9 against 0.6) and no surer where wrong, so its log loss is lower by 0.342 nats on
    every right image, far past the paired standard error: it is chosen over the cheaper frozen head."""
    labels = np.array([0, 1] * 64)
    right = [True] * 120 + [False] * 8
    rows = [_family_row("frozen", right, labels, confidence=0.6), _family_row("fine-tune", right, labels, 0.9)]
    rows[1].valid_probs[~np.array(right)] = rows[0].valid_probs[~np.array(right)]  # wrong alike (0.6 sure)
    assert rows[0].valid_accuracy == rows[1].valid_accuracy
    assert auto._pick(rows, labels, None).family == "fine-tune"
    assert rows[0].valid_score - rows[1].valid_score == pytest.approx(120 / 128 * np.log(0.9 / 0.6))


def test_a_trained_candidate_must_lead_a_cheaper_one_by_two_standard_errors():
    """Its best epoch was picked on the validation images, so one standard error is not enough: 60 validation images,
    both 0.9 sure; the fine-tuned net right on 3 images the frozen head gets wrong (and on every other the head gets
    right) leads by 3 x 2.197 / 60 = 0.110 nats, 1.7 paired standard errors (0.064): a tie, the frozen head kept. The
    same lead between two candidates of one kind would count (the frozen family's own comparison is transfer.py's)."""
    labels = np.array([0, 1] * 30)
    frozen = _family_row("frozen", [True] * 57 + [False] * 3, labels)
    tuned = _family_row("fine-tune", [True] * 60, labels)
    assert auto._pick([frozen, tuned], labels, None).family == "frozen"
    standard_error = frozen.margin / auto.TRAINED_LEAD
    lead = frozen.valid_score - tuned.valid_score
    assert lead == pytest.approx(3 * (np.log(0.9) - np.log(0.1)) / 60) and standard_error < lead < frozen.margin


def test_with_a_positive_class_the_search_compares_auc_not_log_loss():
    """A candidate that is right more often and surer but ranks the positive class worse loses when --positive asks
    for AUC: the frozen head below is right on 20 of 40 (its scores on class 1 sit just above 0.5 for every image:
    the ranking is perfect, log loss 0.683), the fine-tuned net on 30 of 40 (log loss 0.467, a lead of 0.216 past
    twice its paired standard error of 0.089, as a trained candidate's lead must be) with a ranking that mixes the
    classes."""
    labels = np.array([0] * 20 + [1] * 20)
    ranks = np.r_[np.linspace(0.501, 0.51, 20), np.linspace(0.511, 0.52, 20)]  # positives above every negative
    frozen = auto.Row("frozen", "frozen", 0.5, config=RunConfig(), valid_probs=np.c_[1 - ranks, ranks])
    # right on 15 of each class; its 15 right positives (0.75) rank above the 15 right negatives (0.02) only, its 5
    # wrong positives (0.3) above the same 15: AUC (225 + 75) / 400 (hand-counted)
    mixed = np.r_[[0.02] * 15, [0.8] * 5, [0.75] * 15, [0.3] * 5]
    tuned = auto.Row("fine-tune", "fine-tune", 0.75, config=RunConfig(), valid_probs=np.c_[1 - mixed, mixed])
    by_log_loss = auto._pick([frozen, tuned], labels, None)
    assert tuned.valid_score < frozen.valid_score - frozen.margin and by_log_loss.family == "fine-tune"
    for row in (frozen, tuned):
        row.status = ""
    by_auc = auto._pick([frozen, tuned], labels, 1)
    assert frozen.valid_score == 1.0 and tuned.valid_score == 300 / 400 and by_auc.family == "frozen"


def test_fine_tuning_keeps_back_the_time_an_ensemble_with_the_frozen_head_would_need():
    """After a frozen head that answered the validation images, the fine-tuned candidate plans its epochs keeping
    back its own work after training twice over (both members answer every image) and a head fit: an ensemble
    that wins on evidence is then not dropped for want of time. With no other candidate measured, nothing more."""
    labels = np.array([0, 1] * 15)
    frozen = _family_row("frozen", [True] * 30, labels)
    assert auto._with_room_for_ensemble((4.0, 20.0), [frozen]) == (8.0, 20.0 + 2 * auto.TAIL_SECONDS)
    skipped = auto.Row("simple_cnn_bn", "scratch", status="skipped: the budget is spent")
    assert auto._with_room_for_ensemble((4.0, 20.0), [skipped]) == (4.0, 20.0)
