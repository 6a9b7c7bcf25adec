"""`evaluate_run`: the best checkpoint on the test split -> predictions.csv, eval.json, a per-class table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.audit.gate import evaluation_note
from cnnlab.config import with_overrides
from cnnlab.data.lazy import select
from cnnlab.data.sources import Source, load_source
from cnnlab.data.splits import RunSplits, read_run_splits
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.analysis import PredictionTable, binary_summary, multiclass_summary, read_predictions
from cnnlab.files import read_json, write_csv_atomic, write_json_atomic
from cnnlab.models.checkpoint import check_compatible, load_checkpoint
from cnnlab.predict.backends import Backend, choose_backend
from cnnlab.predict.infer import mean_of_views, model_from_checkpoint, model_logits
from cnnlab.runs import RunFile, open_run, recorded_tta, refuse_existing, source_slug


def format_accuracy_table(result: dict[str, Any]) -> str:
    """The course's printout: `Test Accuracy of Sneaker: 97% (970/1000)` per class, then the overall line."""
    lines = [f"Test Loss: {result['test_loss']:.6f}", ""]
    for name, row in result["per_class"].items():
        if row["total"]:
            lines.append(
                f"Test Accuracy of {name:>5}: {int(100 * row['accuracy']):2d}% ({row['correct']}/{row['total']})"
            )
        else:
            lines.append(f"Test Accuracy of {name:>5}: N/A (no test images)")
    n_correct = sum(r["correct"] for r in result["per_class"].values())
    lines += ["", f"Test Accuracy (Overall): {100 * result['accuracy']:.2f}% ({n_correct}/{result['n_test']})"]
    return "\n".join(lines)


def evaluate_run(
    run_dir: Path,
    *,
    checkpoint: Path | None = None,
    source: Source | None = None,
    positive: str | None = None,
    rule: str | None = None,
    dry_run: bool = False,
    backend: str = "auto",
    skip_changed: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Evaluate `run_dir`'s best.pt (or `checkpoint`) on its test split; write the result files.

    The test and validation images are the files splits.json recorded at training: a file added to the folder
    since joins no split, and one gone or changed is an error, or with `skip_changed` left out (counted in
    eval.json). Where the test split holds copies of training images or shares groups with training (a folder's
    own train/ and test/), the score on the rest is reported beside the whole one (`leak_free`).

    Writes predictions.csv (test), valid_predictions.csv (for threshold choice later) and eval.json,
    each atomically. With a positive class (the run's `evaluation.positive`, or `positive` for this
    evaluation), eval.json gains a `binary` block (that class vs the rest) with the threshold chosen by the
    rule on validation. With `dry_run`, one batch is scored, nothing written. `backend` (auto|torch|onnx) runs
    the model: auto measures which is faster here (export.backends).
    """
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    wanted = with_overrides(config, "evaluation", positive=positive, threshold_rule=rule).evaluation  # validated
    positive, rule = wanted.positive, wanted.rule
    ckpt_path = Path(checkpoint) if checkpoint else run_dir / RunFile.BEST
    ckpt = load_checkpoint(ckpt_path)
    source = source or load_source(config.data)
    check_compatible(ckpt, model_name=config.model.name, class_names=source.class_names, path=ckpt_path)
    recorded = read_run_splits(run_dir / RunFile.SPLITS, source, needed=("valid", "test"), skip_changed=skip_changed,
                               log=log)  # fmt: skip
    splits = recorded.splits
    model = model_from_checkpoint(ckpt, ckpt_path)
    norm = ckpt.preprocessing.normalization()
    max_batches = 1 if dry_run else None
    cache_dir = None if dry_run else Path(config.data.root) / "cache"
    valid_idx, test_idx = splits["valid"], splits["test"]
    n_images = 2 * (len(valid_idx) + len(test_idx))  # both splits, perhaps mirrored too
    sample = select(source.images, test_idx[:64])[:64]  # a tensor, also from a streamed source
    chosen = _backend(model, ckpt_path, sample, norm, wanted=backend, n_images=n_images, run_dir=run_dir,
                      dry_run=dry_run, log=log)  # fmt: skip
    tta, why, valid_logits = _choose_tta(
        config, model, select(source.images, valid_idx), source.labels[valid_idx], norm, cache_dir=cache_dir,
        max_batches=max_batches, forward=chosen.forward, decided_tta=recorded_tta(run_dir),
    )  # fmt: skip
    # test is touched once, in the way validation chose
    test_logits = model_logits(model, select(source.images, test_idx), norm, cache_dir=cache_dir,
                               max_batches=max_batches, tta=tta, forward=chosen.forward)  # fmt: skip
    outputs = {
        "test": (test_idx[: len(test_logits)], test_logits),
        "valid": (valid_idx[: len(valid_logits)], valid_logits),
    }
    tables = {split: _table(source, *outputs[split]) for split in outputs}
    if positive is not None:
        tables["test"].class_index(positive)  # an unknown class fails before anything is written
    idx, logits = outputs["test"]
    why_tta = why or ("--tta" if tta else "off: flips change the labels, or --no-tta")
    result = _scores(tables["test"], logits, ckpt, ckpt_path, tta=tta, why_tta=why_tta, backend=chosen)
    groups = _test_groups(recorded, source, idx)
    if groups is not None:
        result["test_groups"] = groups.tolist()  # rescoring later resamples the same groups
    if positive is not None:
        result["binary"] = binary_summary(tables["test"], tables["valid"], positive, rule, seed=config.train.seed,
                                          groups=groups)  # fmt: skip
    if recorded.changes:
        result["folder_changes"] = recorded.changes
    note = None if dry_run else evaluation_note(run_dir)
    if note is not None:  # the score says whether its test set held copies of training images, or had them dropped
        result["data_audit"] = note
    leak_free = _leak_free(run_dir, recorded, source, idx, tables["test"], note)
    if leak_free is not None:
        result["leak_free"] = leak_free
    if dry_run:
        log(f"dry run ok: scored {len(idx)} test images (nothing written)")
        if "binary" in result:
            log(format_binary(result["binary"]))
        return result
    if why is not None:  # decided now, kept in eval.json: `cnnlab predict RUN` follows it (run_tta)
        log(f"test-time flips: {'on' if tta else 'off'} ({why})")
    for split, name in (("test", RunFile.PREDICTIONS), ("valid", RunFile.VALID_PREDICTIONS)):
        write_predictions(run_dir / name, source, *outputs[split])
    write_json_atomic(run_dir / RunFile.EVAL, result)
    log(format_accuracy_table(result))
    if "leak_free" in result:
        log(format_leak_free(result["leak_free"]))
    if "binary" in result:
        log(format_binary(result["binary"]))
    return result


def evaluate_other_data(
    run_dir: Path, data: str, *, output: Path | None = None, force: bool = False, backend: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Score `run_dir`'s best.pt on every image of another labelled source (`cnnlab evaluate RUN --data
    folder:NEW`): its class folders must be classes of the run. Test-time flips follow the run's evaluation, a
    --positive threshold is the one the run chose on its own validation split. predictions.csv and eval.json go
    into `output` (default RUN/eval-<name>/); the run's own evaluation is not touched."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    ckpt_path = run_dir / RunFile.BEST
    ckpt = load_checkpoint(ckpt_path)
    source = load_source(replace(config.data, source=data), log=log)
    source = _as_run_classes(source, list(ckpt.class_names), data)
    out = Path(output) if output is not None else run_dir / f"eval-{source_slug(data)}"
    refuse_existing(out / RunFile.EVAL, force=force)
    model = model_from_checkpoint(ckpt, ckpt_path)
    norm = ckpt.preprocessing.normalization()
    idx = np.arange(len(source.labels))
    sample = select(source.images, idx[:64])[:64]
    chosen = _backend(model, ckpt_path, sample, norm, wanted=backend, n_images=len(idx), run_dir=run_dir,
                      dry_run=False, log=log)  # fmt: skip
    tta = bool(recorded_tta(run_dir))
    logits = model_logits(model, select(source.images, idx), norm, cache_dir=Path(config.data.root) / "cache",
                          tta=tta, forward=chosen.forward)  # fmt: skip
    table = _table(source, idx, logits)
    result = {
        "data": data,
        "run": str(run_dir),
        **_scores(table, logits, ckpt, ckpt_path, tta=tta, why_tta="as the run was evaluated", backend=chosen),
    }
    positive = config.evaluation.positive
    if positive is not None:
        valid = read_predictions(run_dir / RunFile.VALID_PREDICTIONS)
        result["binary"] = binary_summary(table, valid, positive, config.evaluation.rule, seed=config.train.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_predictions(out / RunFile.PREDICTIONS, source, idx, logits)
    write_json_atomic(out / RunFile.EVAL, result)
    log(format_accuracy_table(result))
    if "binary" in result:
        log(format_binary(result["binary"]))
    log(f"wrote {out / RunFile.PREDICTIONS} and {out / RunFile.EVAL}")
    return result


def _scores(table: PredictionTable, logits: torch.Tensor, ckpt, ckpt_path: Path, *, tta: bool, why_tta: str,
            backend: Backend) -> dict[str, Any]:  # fmt: skip
    """eval.json's common part: the test loss, what ran, and the multi-class summary."""
    return {
        "n_test": len(table.labels), "test_loss": float(F.cross_entropy(logits, torch.as_tensor(table.labels))),
        "checkpoint": str(ckpt_path), "epoch": ckpt.epoch, "tta": tta, "tta_reason": why_tta,
        "backend": {"name": backend.name, "why": backend.why}, **multiclass_summary(table),
    }  # fmt: skip


def _as_run_classes(source: Source, classes: list[str], data: str) -> Source:
    """`source` with its labels renumbered as the run's classes (a new folder may hold only some of them)."""
    unknown = [c for c in source.class_names if c not in classes]
    if unknown:
        raise CnnlabError(f"{data} has class folder(s) {', '.join(unknown)} the run was not trained on "
                          f"(its classes: {', '.join(classes)}; remove or rename them)")  # fmt: skip
    mapping = torch.as_tensor([classes.index(c) for c in source.class_names])
    return replace(source, labels=mapping[source.labels], class_names=classes)


def _backend(model, ckpt_path: Path, sample, norm, *, wanted: str, n_images: int, run_dir: Path, dry_run: bool, log):
    """What runs the model on whole images: `--backend`, or the faster one measured here. A frozen backbone
    whose features are cached needs none (it reads the features); a dry run neither builds nor keeps files."""
    if wanted == "auto" and (dry_run or model.frozen):
        return Backend("torch", model, "dry run" if dry_run else "frozen backbone: cached features and PyTorch")
    chosen = choose_backend(model, ckpt_path, norm.apply(sample).float(), n_images=n_images, wanted=wanted,
                            cache_dir=None if dry_run else run_dir / "cache", log=log)  # fmt: skip
    log(f"prediction backend: {chosen.name} ({chosen.why})")
    return chosen


def _choose_tta(
    config, model, images, labels, norm, *, cache_dir, max_batches, forward, decided_tta: bool | None = None
) -> tuple[bool, str | None, torch.Tensor]:
    """Whether to average each image's prediction with its mirror image's: as configured (--tta/--no-tta); by
    default never where flips change the label or training never decided whether they do, otherwise when that
    lowers the validation loss. A frozen backbone's head never decides about flips (it sees no augmentation), so
    unless the data says flips change labels its validation loss decides: on the blood-cell photos averaging
    with mirror images lowered it (0.500 -> 0.489) and raised the test score 86.25% -> 88.12%; on caltech12 it
    raised it and stayed off (bench/RESULTS.md, issue 43). Returns (tta, why when decided here, the validation
    logits so made)."""
    plain = model_logits(model, images, norm, cache_dir=cache_dir, max_batches=max_batches, forward=forward)
    wanted = decided_tta  # --tta/--no-tta in config.yaml, else what an earlier evaluation decided, else None
    undecided = config.data.flips is False or (config.data.flips is None and not model.frozen)
    if wanted is False or (wanted is None and undecided):
        return False, None, plain
    both = mean_of_views(plain, model_logits(model, images, norm, cache_dir=cache_dir, max_batches=max_batches,
                                             forward=forward, mirror=True))  # fmt: skip
    if wanted:
        return True, None, both
    y = torch.as_tensor(labels[: len(plain)])
    plain_loss, both_loss = float(F.cross_entropy(plain, y)), float(F.cross_entropy(both, y))
    use = both_loss < plain_loss
    why = f"valid loss {both_loss:.4f} averaged with mirror images vs {plain_loss:.4f} without"
    return use, why, both if use else plain


def rescore_binary(run_dir: Path, *, positive: str | None, rule: str | None) -> dict[str, Any]:
    """Recompute eval.json's `binary` block from the saved test and validation predictions (no model run) for
    another positive class or threshold rule; the same helper, seed and checks as `evaluate_run` (thresholds
    agree with it to the CSV's 6 decimals)."""
    run_dir = Path(run_dir)
    config = open_run(run_dir)
    path = run_dir / RunFile.EVAL
    result = read_json(path, missing=f"run `cnnlab evaluate {run_dir}` first")
    old = result.get("binary") or {}
    wanted = with_overrides(config, "evaluation", positive=positive or old.get("positive"),
                            threshold_rule=rule or old.get("threshold_rule")).evaluation  # fmt: skip
    if wanted.positive is None:
        raise CnnlabError("no positive class to score (pass --positive CLASS)")
    test = read_predictions(run_dir / RunFile.PREDICTIONS)
    valid_path = run_dir / RunFile.VALID_PREDICTIONS
    valid = read_predictions(valid_path) if valid_path.is_file() else None
    groups = result.get("test_groups")
    result["binary"] = binary_summary(test, valid, wanted.positive, wanted.rule, seed=config.train.seed,
                                      groups=None if groups is None else np.asarray(groups))  # fmt: skip
    write_json_atomic(path, result)
    return result


def _test_groups(recorded: RunSplits, source: Source, idx: np.ndarray) -> np.ndarray | None:
    """The recorded group of each test image, when some test images share one (else None: images are cases)."""
    if not recorded.groups:
        return None
    groups = recorded.group_ids(source, idx)
    return groups if len(np.unique(groups)) < len(groups) else None


def _leak_free(run_dir: Path, recorded: RunSplits, source: Source, idx: np.ndarray, test: PredictionTable,
               note: dict[str, Any] | None) -> dict[str, Any] | None:  # fmt: skip
    """The score on the test images that neither duplicate a training image (the audit's leakage) nor share a group
    with one, when some do: a folder's own train/ and test/ can hold both, and a headline on them is inflated."""
    leaked = set()
    if note is not None and note["leaked_held_out_images"]["test"]:
        findings = read_json(run_dir / RunFile.AUDIT_JSON, missing="")["findings"]
        leaked |= {r["image"] for r in findings if r["issue"].startswith("leakage") and r["split"] == "test"}
    if recorded.groups:
        trained = set(recorded.group_ids(source, recorded.splits["train"]).tolist())
        groups = recorded.group_ids(source, idx)
        leaked |= {source.ids[int(i)] for i, g in zip(idx, groups, strict=True) if g in trained}
    if not leaked:
        return None
    keep = np.asarray([i not in leaked for i in test.ids])
    if not keep.any():
        return {"n_test": 0, "accuracy": None, "left_out": int(len(keep))}
    correct = test.probs[keep].argmax(1) == test.labels[keep]
    return {"n_test": int(keep.sum()), "correct": int(correct.sum()), "accuracy": float(correct.mean()),
            "left_out": int((~keep).sum()),
            "why": "test images that duplicate a training image (audit.json) or share a group with one"}  # fmt: skip


def format_leak_free(leak_free: dict[str, Any]) -> str:
    """One line under the headline: the score without the test images that leaked from training."""
    if leak_free["accuracy"] is None:
        return f"Test Accuracy (leak-free): none left ({leak_free['left_out']} test images leaked from training)"
    return (f"Test Accuracy (leak-free):  {100 * leak_free['accuracy']:.2f}% ({leak_free['correct']}/"
            f"{leak_free['n_test']}; {leak_free['left_out']} test image(s) that duplicate a training image or share "
            "its group left out)")  # fmt: skip


def _table(source: Source, indices: np.ndarray, logits: torch.Tensor) -> PredictionTable:
    probs = torch.softmax(logits.float(), dim=1).numpy().astype(np.float64)
    labels = source.labels[indices].numpy()
    return PredictionTable([source.ids[i] for i in indices], labels, probs, list(source.class_names))


def format_binary(b: dict[str, Any]) -> str:
    """Two lines: AUC with its CI, then the frozen threshold and what it achieved on test."""
    lo, hi = b["auc_ci95"]
    return (
        f"\n{b['positive']} vs rest: AUC {b['auc']:.4f} (95% CI {lo:.4f}-{hi:.4f})\n"
        f"threshold {b['threshold']:.4f} ({b['threshold_rule']}, chosen on {b['threshold_chosen_on']}): "
        f"test sensitivity {b['sensitivity']:.4f}, specificity {b['specificity']:.4f}, "
        f"PPV {b['ppv']:.4f}, NPV {b['npv']:.4f} (TP {b['tp']}, FP {b['fp']}, FN {b['fn']}, TN {b['tn']})"
    )


def write_predictions(path: Path, source: Source, indices: np.ndarray, logits: torch.Tensor) -> None:
    """CSV: id (dataset index or file path), label, predicted, then one probability column per class."""
    probs = torch.softmax(logits, dim=1).numpy()
    names = source.class_names
    rows = (
        [source.ids[i], names[int(source.labels[i])], names[int(p.argmax())], *[f"{v:.6f}" for v in p]]
        for i, p in zip(indices, probs, strict=True)
    )
    write_csv_atomic(path, ["id", "label", "predicted", *[f"p_{c}" for c in names]], rows)
