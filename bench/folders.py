"""Default flags on real image folders vs a plain baseline measured in the same run.

For each folder (built here from data that ships offline, as DEST/{train,valid,test}/<class>/*.png):
(a) `cnnlab train --data folder:X` with default flags (`--model auto`: the model chosen by training/auto.py),
(b) `--model simple_cnn_bn` (the from-scratch CNN, the default before `auto`) and `--model efficientnet_lite0`
    (strategy auto): the hand-picked candidates,
(c) the baseline: the same backbone's pooled ImageNet features, computed through timm's own preprocessing
    (PIL, resize + centre crop, its mean/std), and scikit-learn's LogisticRegression(max_iter=5000) fit on
    train, scored on test.
Binary folders report AUC (positive class = the first) besides accuracy. Prints one JSON line.

Folders: digits, lfw, fashion-N (N images in all, from Fashion-MNIST; fashion-N@S draws them with seed S;
fashion-N@S+T adds T images of Fashion-MNIST's official test set to the test split, so that a one-point
difference is more than one or two test images), or
the name of a photo folder in ../shared/data (caltech12, blood-cells). The default's row names the candidate the
model search chose, the runner-up (both by validation accuracy) and what it skipped. The hand-picked candidates
are the from-scratch CNN and the backbone with its frozen strategy measured; fine-tuning is not run by hand here
(the search runs it).

With --default-only, only (a) and (c): the default against the baseline (e.g. on several draws of one size).
With --peers-only and --keep-runs DIR of an earlier run, (a) is not run again: the baseline and the peer score the
kept default runs' splits (so the default's timed, budgeted run can be given the machine alone, and the peers,
whose accuracy does not depend on the wall clock, run later).
With --fastai PYTHON, also (d) the peer: fastai's `vision_learner(...).fine_tune(--fastai-epochs)` on the same
Lite0 weights, split and test images (bench/fastai_peer.py, run by PYTHON: an environment with fastai and timm,
since fastai is not a cnnlab dependency; e.g. `python -m venv /tmp/fa && /tmp/fa/bin/pip install fastai timm
torch==2.14.1 torchvision==0.29.1`).

Usage: .venv/bin/python bench/folders.py [--folders blood-cells caltech12 fashion-1000 digits lfw fashion-600]
       [--default-only] [--fastai /tmp/fa/bin/python [--fastai-epochs 5]] [--keep-runs DIR [--peers-only]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.config import DataConfig, EvaluationConfig, ModelConfig, RunConfig
from cnnlab.data.samples import write_sample_folder
from cnnlab.pipeline import train
from cnnlab.runs import open_run

BACKBONE = "efficientnet_lite0"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # the photo folders (never copied)


def write_digits(dest: Path) -> None:
    """scikit-learn's 1,797 real 8x8 digits as PNGs (one folder per class; cnnlab splits them)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = dest / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).round().astype(np.uint8)).save(folder / f"{i}.png")


def write_extra_test(test_dir: Path, n: int, *, seed: int) -> None:
    """`n` images of Fashion-MNIST's official test partition (never in the sample's pool), n/10 per class, into
    the folder's test split."""
    from cnnlab.data.sources import load_source

    source = load_source(DataConfig(source="fashion-mnist"))
    labels, pool = source.labels.numpy(), source.partitions["test"]
    rng = np.random.default_rng(seed)
    for c, cls in enumerate(source.class_names):
        for i in rng.choice(pool[labels[pool] == c], n // 10, replace=False):
            Image.fromarray(source.images[i, 0].numpy()).save(test_dir / cls.replace("/", "-") / f"official-{i}.png")


def cnnlab_run(folder: Path, root: Path, runs: Path, name: str, model: str | None, positive: str | None) -> dict:
    config = RunConfig(
        data=DataConfig(source=f"folder:{folder}", root=str(root)), evaluation=EvaluationConfig(positive=positive)
    )
    if model:
        config = replace(config, model=ModelConfig(name=model))
    start = time.perf_counter()
    result = train(config, runs_dir=runs, name=name, report=False, log=lambda _: None)
    seconds = time.perf_counter() - start
    saved = open_run(runs / name)
    out = {
        "accuracy": round(result.evaluation["accuracy"], 4),
        "seconds": round(seconds, 1),
        "test_time_flips": f"{'on' if result.evaluation['tta'] else 'off'} ({result.evaluation['tta_reason']})",
    }
    if positive:
        out["auc"] = round(result.evaluation["binary"]["auc"], 4)
    if saved.model.strategy:
        out["strategy"] = saved.model.strategy + (f" levels {saved.model.options['levels']}" if "levels" in
                                                   saved.model.options else "")  # fmt: skip
    searched = [row for row in saved.model.strategy_candidates or [] if "status" in row]
    if searched:  # the model search's table: the chosen candidate and the runner-up, by validation accuracy
        chosen = next(row for row in searched if row["status"] == "chosen")
        others = sorted((r for r in searched if r is not chosen and r["valid_accuracy"] is not None),
                        key=lambda r: -r["valid_accuracy"])  # fmt: skip
        out["chosen"] = f"{chosen['candidate']} (valid {chosen['valid_accuracy']})"
        if others:
            out["runner_up"] = f"{others[0]['candidate']} (valid {others[0]['valid_accuracy']})"
        out["skipped"] = [f"{r['candidate']}: {r['status']}" for r in searched if r["status"].startswith("skipped")]
        out["compared"] = [f"{r['candidate']}: {r['valid_score']} +- {r['tie_margin']} (valid {r['valid_accuracy']})"
                           for r in searched if "valid_score" in r]  # fmt: skip
    elif saved.model.strategy_candidates:
        out["candidates"] = saved.model.strategy_candidates
    out["model"] = saved.model.name
    out["decisions"] = saved.decisions
    return out


def sklearn_baseline(folder: Path, run: Path, positive_first: bool) -> dict:
    """LogisticRegression on the backbone's pooled features, preprocessing by timm (independent of cnnlab's), on the
    files of `run`'s own splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from timm.data import create_transform, resolve_data_config

    from cnnlab.models.pretrained import PretrainedClassifier, load_pretrained

    start = time.perf_counter()
    model = PretrainedClassifier(2, 3, 224, backbone=BACKBONE, strategy="feature-extract")
    load_pretrained(model)
    model.eval()
    transform = create_transform(**resolve_data_config({}, model=model.backbone))
    splits = _file_splits(folder, run)
    classes = sorted({label for files in splits.values() for _, label in files})
    feats = {}
    for split, files in splits.items():
        out = []
        with torch.inference_mode():
            for i in range(0, len(files), 64):
                x = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in files[i : i + 64]])
                out.append(model.backbone(x))
        feats[split] = (torch.cat(out).numpy(), np.array([classes.index(c) for _, c in files]))
    clf = LogisticRegression(max_iter=5000).fit(*feats["train"])
    x_test, y_test = feats["test"]
    result = {"accuracy": round(float(clf.score(x_test, y_test)), 4), "seconds": round(time.perf_counter() - start, 1)}
    if positive_first and len(classes) == 2:
        result["auc"] = round(float(roc_auc_score(y_test == 0, clf.predict_proba(x_test)[:, 0])), 4)
    return result


def fastai_peer(python: str, folder: Path, run: Path, tmp: Path, *, epochs: int, positive_first: bool) -> dict:
    """bench/fastai_peer.py in the fastai environment `python`, on `run`'s split files and the same Lite0 tensors
    (written here in timm's naming from the offline wheel)."""
    from cnnlab.models.pretrained import PretrainedClassifier, load_pretrained

    model = PretrainedClassifier(2, 3, 224, backbone=BACKBONE, strategy="fine-tune")
    load_pretrained(model)
    weights = tmp / "lite0-timm.pt"
    torch.save(model.backbone.state_dict(), weights)
    spec = {s: [[str(p), c] for p, c in files] for s, files in _file_splits(folder, run).items()}
    spec_file = tmp / f"{run.name}-fastai.json"
    spec_file.write_text(json.dumps({**spec, "weights": str(weights)}))
    command = [python, str(Path(__file__).with_name("fastai_peer.py")), str(spec_file), "--epochs", str(epochs)]
    done = subprocess.run(command + (["--positive-first"] if positive_first else []), capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _file_splits(folder: Path, run: Path) -> dict[str, list[tuple[Path, str]]]:
    """train/valid/test file lists: the files `run` recorded in its splits.json (the default's split, duplicates
    kept together), so that the baseline scores the same test images."""
    from cnnlab.data.sources import load_source
    from cnnlab.data.splits import load_splits

    source = load_source(DataConfig(source=f"folder:{folder}", root=str(Path(tempfile.mkdtemp()))))
    splits = load_splits(run / "splits.json", source)
    return {s: [(Path(source.ids[i]), source.class_names[int(source.labels[i])]) for i in splits[s]] for s in splits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="+", default=["digits", "lfw", "fashion-600"])
    parser.add_argument("--fashion-folder", type=Path, help="also run this folder (e.g. all of Fashion-MNIST as PNGs)")
    parser.add_argument("--default-only", action="store_true", help="skip the hand-picked candidates")
    parser.add_argument("--fastai", metavar="PYTHON", help="a Python with fastai and timm: run the fastai peer")
    parser.add_argument("--fastai-epochs", type=int, default=5, help="fine_tune's unfrozen epochs")
    parser.add_argument("--keep-runs", type=Path, help="keep the run folders here (to score an ensemble's members)")
    parser.add_argument("--peers-only", action="store_true", help="score the peers on --keep-runs' default runs")
    args = parser.parse_args()
    if args.peers_only and not (args.keep_runs and args.keep_runs.is_dir()):
        parser.error("--peers-only scores the default runs kept by an earlier --keep-runs DIR: pass that DIR")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = args.keep_runs or tmp / "runs"
        folders = {}
        for name in args.folders:
            dest = tmp / name
            if name == "digits":
                write_digits(dest)
            elif name == "lfw":
                write_sample_folder("lfw", dest)
            elif name.startswith("fashion-"):
                size, _, draw = name.removeprefix("fashion-").partition("@")
                seed, _, extra = draw.partition("+")
                write_sample_folder("fashion", dest, per_class=int(size) // 10, seed=int(seed or 0))
                if extra:
                    write_extra_test(dest / "test", int(extra), seed=int(seed or 0))
            else:
                dest = SHARED / name
            folders[name] = dest
        if args.fashion_folder:
            folders["fashion-folder"] = args.fashion_folder
        for name, folder in folders.items():
            positive = "face" if name == "lfw" else None
            r = results[name] = {}
            if not args.peers_only:
                r["default"] = cnnlab_run(folder, tmp / "root", runs, f"{name}-default", None, positive)
            kept = runs / f"{name}-default"
            r["sklearn_logreg"] = sklearn_baseline(folder, kept, positive_first=positive is not None)
            if "default" in r:
                r["default_over_baseline"] = round(r["default"]["accuracy"] / r["sklearn_logreg"]["accuracy"], 4)
            if args.fastai:
                r["fastai_fine_tune"] = fastai_peer(
                    args.fastai, folder, kept, tmp, epochs=args.fastai_epochs, positive_first=positive is not None
                )
                if "accuracy" in r["fastai_fine_tune"] and "default" in r:
                    r["default_minus_fastai"] = round(r["default"]["accuracy"] - r["fastai_fine_tune"]["accuracy"], 4)
            if not (args.default_only or args.peers_only):
                r["scratch"] = cnnlab_run(folder, tmp / "root", runs, f"{name}-cnn", "simple_cnn_bn", positive)
                r["pretrained_auto"] = cnnlab_run(folder, tmp / "root", runs, f"{name}-lite0", BACKBONE,
                                                  positive)  # fmt: skip
                best = max(r["scratch"]["accuracy"], r["pretrained_auto"]["accuracy"])
                r["default_minus_best_hand_picked"] = round(r["default"]["accuracy"] - best, 4)
                r["default_minus_old_default"] = round(r["default"]["accuracy"] - r["scratch"]["accuracy"], 4)
            print(json.dumps({name: r}), file=sys.stderr)  # progress: one folder at a time
    print(json.dumps({
        "bench": "folders", "backbone": BACKBONE, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "results": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
