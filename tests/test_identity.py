"""A run's test set stays its test set: splits.json records files by identity, a changed folder is named and never
absorbed, groups (--group-by, --groups, duplicate clusters) never span two splits, and a fixed split's leaked test
images are scored apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from cnnlab import pipeline
from cnnlab.config import RunConfig, with_overrides
from cnnlab.data.groups import groups_from_pattern, merge_groups
from cnnlab.data.sources import load_source
from cnnlab.data.splits import grouped_split, read_run_splits, stratified_split
from cnnlab.errors import CnnlabError
from cnnlab.evaluate.metrics import bootstrap_auc_ci

CLASSES = (0, 1, 2)


def _digit(index: int, size: int = 16) -> Image.Image:
    pixels = (load_digits().images[index] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.NEAREST)


def _folder(root: Path, *, per_class: int = 40, start: int = 0, name=lambda cls, i: f"{i:03d}.png") -> Path:
    """Real digits as class folders digit0/ digit1/ digit2/; `start` skips the first images of each class."""
    target = load_digits().target
    for cls in CLASSES:
        (root / f"digit{cls}").mkdir(parents=True, exist_ok=True)
        for i, idx in enumerate(np.flatnonzero(target == cls)[start : start + per_class]):
            _digit(int(idx)).save(root / f"digit{cls}" / name(cls, i))
    return root


def _train(cli, folder: Path, runs: Path, name: str, *extra) -> tuple[str, str]:
    code, out, err = cli("train", "--data", f"folder:{folder}", "--model", "mlp", "--epochs", "2", "--no-report",
                         "--runs-dir", runs, "--name", name, "--data-root", runs.parent / "data", *extra)  # fmt: skip
    assert code == 0, err
    return out, err


def _eval(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


def _test_files(run: Path) -> list[str]:
    return json.loads((run / "splits.json").read_text())["test"]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A folder of 120 real digits and a run trained on it; tests copy both before changing them."""
    from cnnlab.cli import main

    base = tmp_path_factory.mktemp("identity")
    folder = _folder(base / "digits")
    try:
        main(["train", "--data", f"folder:{folder}", "--model", "mlp", "--epochs", "2", "--no-report", "--runs-dir",
              str(base / "runs"), "--name", "r", "--data-root", str(base / "data")])  # fmt: skip
    except SystemExit as exc:
        assert not exc.code
    return folder, base / "runs" / "r"


@pytest.fixture
def copied(folder_run, tmp_path):
    """The module's folder and run, copied; the run's config points at the copied folder."""
    folder, run = folder_run
    folder = Path(shutil.copytree(folder, tmp_path / "digits"))
    run = Path(shutil.copytree(run, tmp_path / "runs" / "r"))
    config = run / "config.yaml"
    config.write_text(config.read_text().replace(str(folder_run[0]), str(folder)))
    return folder, run


def test_files_added_after_training_join_no_split_and_the_score_is_the_original(copied, cli):
    folder, run = copied
    before = _eval(run)
    for i, idx in enumerate(np.flatnonzero(load_digits().target == 1)[60:80]):  # 20 more photos of one class
        _digit(int(idx)).save(folder / "digit1" / f"000new{i:02d}.png")  # sorted before every old name
    code, out, err = cli("evaluate", run)
    assert code == 0, err
    assert "folder changed since training: +20 file(s) (digit1), -0, 0 modified" in out
    after = _eval(run)
    assert after["n_test"] == before["n_test"] and after["accuracy"] == before["accuracy"]
    assert after["folder_changes"]["added"] == 20
    ids = [r.split(",")[0] for r in (run / "predictions.csv").read_text().splitlines()[1:]]
    assert not any("000new" in i for i in ids) and len(ids) == before["n_test"]
    code, out, err = cli("report", run, "--no-explain")
    assert code == 0 and "folder changed since training: +20 file(s) (digit1)" in out, err
    assert '<p id="folder-changes">The folder changed since training: +20 file(s)' in (run / "report.html").read_text()


def test_a_removed_test_file_is_one_line_and_skip_changed_scores_the_rest(copied, cli):
    folder, run = copied
    before = (run / "eval.json").read_bytes()
    gone = _test_files(run)[0]
    (folder / gone).unlink()
    code, out, err = cli("evaluate", run)
    assert code == 2 and err.strip() == (
        f"error: test file {gone} was removed since training: restore it, pass --skip-changed to use the unchanged "
        "rest, or train a new run on the folder as it is"
    )
    assert (run / "eval.json").read_bytes() == before  # nothing written
    code, out, err = cli("evaluate", run, "--skip-changed")
    assert code == 0, err
    result = _eval(run)
    assert result["n_test"] == json.loads(before)["n_test"] - 1
    assert result["folder_changes"]["left_out"] == {"train": 0, "valid": 0, "test": 1}
    assert "left out as gone or changed: 1 test" in out


def test_a_modified_test_file_is_named_and_a_touched_one_is_not(copied, cli):
    folder, run = copied
    first, second = _test_files(run)[:2]
    (folder / second).touch()  # same bytes, new time: not a change
    _digit(0, size=20).save(folder / first)  # another picture under the recorded name
    code, _, err = cli("evaluate", run)
    assert code == 2 and f"test file {first} was changed since training" in err
    assert second not in err and len(err.strip().splitlines()) == 1


def test_resume_on_a_changed_folder_trains_on_the_recorded_files_only(copied, monkeypatch):
    folder, run = copied
    recorded = json.loads((run / "splits.json").read_text())
    for name in ("best.pt", "last.pt", "metrics.csv", "eval.json", "predictions.csv", "valid_predictions.csv"):
        (run / name).unlink(missing_ok=True)  # killed before its first epoch: resume trains from the saved plan
    for i, idx in enumerate(np.flatnonzero(load_digits().target == 2)[60:70]):
        _digit(int(idx)).save(folder / "digit2" / f"000new{i:02d}.png")
    seen = {}
    real = pipeline.train_model

    def spy(config, fabric, source, splits, *args, **kwargs):
        seen.update({s: sorted(source.keys[i] for i in idx) for s, idx in splits.items()})
        return real(config, fabric, source, splits, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_model", spy)
    lines = []
    pipeline.resume(run, log=lines.append)
    assert seen == {s: sorted(recorded[s]) for s in ("train", "valid", "test")}
    assert any(line.startswith("folder changed since training: +10 file(s) (digit2)") for line in lines)
    for name in ("best.pt", "last.pt", "metrics.csv", "eval.json", "predictions.csv", "valid_predictions.csv"):
        (run / name).unlink(missing_ok=True)
    (folder / recorded["train"][0]).unlink()  # resume has nothing to skip with: restore, or train anew
    with pytest.raises(CnnlabError, match=rf"^train file {recorded['train'][0]} was removed since training: restore "
                       "it, or train a new run on the folder as it is$"):  # fmt: skip
        pipeline.resume(run, log=lines.append)


def test_an_old_positional_splits_file_still_evaluates_with_a_note(copied, cli):
    folder, run = copied
    source = load_source(with_overrides(RunConfig(), "data", source=f"folder:{folder}").data)
    where = {k: i for i, k in enumerate(source.keys)}
    recorded = json.loads((run / "splits.json").read_text())
    before = _eval(run)
    old = {"seed": 0, **{s: [where[k] for k in recorded[s]] for s in ("train", "valid", "test")}}
    (run / "splits.json").write_text(json.dumps(old))
    code, out, err = cli("evaluate", run)
    assert code == 0, err
    assert "records positions in the folder listing" in out
    assert _eval(run)["accuracy"] == before["accuracy"]


def test_a_named_dataset_records_its_checksum_and_other_data_is_refused(digits_cnn_run, cli):
    saved = json.loads((digits_cnn_run / "splits.json").read_text())
    assert saved["format"] == 2 and len(saved["checksum"]) == 24 and all(isinstance(i, int) for i in saved["test"])
    tampered = dict(saved, checksum="0" * 24)
    (digits_cnn_run / "splits.json").write_text(json.dumps(tampered))
    try:
        code, _, err = cli("evaluate", digits_cnn_run)
        assert code == 2 and "digits is not the data this run trained on" in err
    finally:
        (digits_cnn_run / "splits.json").write_text(json.dumps(saved))


def _patient_folder(root: Path, patients: int = 24, per_patient: int = 4) -> Path:
    """Each 'patient' has several crops of one digit, named p<patient>_<k>.png, in that digit's class folder."""
    target = load_digits().target
    for p in range(patients):
        cls = CLASSES[p % len(CLASSES)]
        idx = int(np.flatnonzero(target == cls)[p])
        (root / f"digit{cls}").mkdir(parents=True, exist_ok=True)
        for k in range(per_patient):
            _digit(idx, size=16 + k).save(root / f"digit{cls}" / f"p{p:02d}_{k}.png")
    return root


def _split_of_group(splits: dict, pattern: str) -> dict[str, set[str]]:
    groups = {}
    for split in ("train", "valid", "test"):
        for _key, group in zip(splits[split], groups_from_pattern(splits[split], pattern), strict=True):
            groups.setdefault(group, set()).add(split)
    return groups


def test_group_by_keeps_each_patient_in_one_split(tmp_path, cli):
    folder = _patient_folder(tmp_path / "patients")
    _, _ = _train(cli, folder, tmp_path / "runs", "g", "--group-by", r"p(\d+)_", "--audit", "off")
    saved = json.loads((tmp_path / "runs" / "g" / "splits.json").read_text())
    spans = _split_of_group(saved, r"p(\d+)_")
    assert len(spans) == 24 and all(len(s) == 1 for s in spans.values())
    assert all(saved[s] for s in ("train", "valid", "test")) and len(saved["groups"]) == 96
    _, _ = _train(cli, folder, tmp_path / "runs", "plain", "--audit", "off")
    plain = json.loads((tmp_path / "runs" / "plain" / "splits.json").read_text())
    assert any(len(s) > 1 for s in _split_of_group(plain, r"p(\d+)_").values())  # what the flag prevents


def test_groups_from_a_csv_and_bad_group_options_are_one_line(tmp_path, cli):
    folder = _patient_folder(tmp_path / "patients", patients=12)
    runs = tmp_path / "runs"
    keys = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    table = tmp_path / "groups.csv"
    table.write_text("file,group\n" + "".join(f"{k},{k.split('/')[1][:3]}\n" for k in keys))
    _train(cli, folder, runs, "csv", "--groups", table, "--audit", "off")
    spans = _split_of_group(json.loads((runs / "csv" / "splits.json").read_text()), r"(p\d+)_")
    assert all(len(s) == 1 for s in spans.values())
    table.write_text("file,group\n" + "".join(f"{k},g\n" for k in keys[1:]))
    for extra, message in (
        (("--groups", table), f"gives no group for 1 of the folder's 48 files, first: {keys[0]}"),
        (("--group-by", r"patient(\d+)"), "matches no part of 48 file name(s), first: digit0/p00_0.png"),
        (("--group-by", "p(\\d+"), "is not a regular expression"),
    ):
        code, _, err = cli("train", "--data", f"folder:{folder}", "--model", "mlp", "--epochs", "1", "--runs-dir",
                           runs, "--name", "bad", "--data-root", tmp_path / "data", *extra)  # fmt: skip
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (runs / "bad").exists()
    code, _, err = cli("train", "--data", "digits", "--group-by", "x", "--dry-run")
    assert code == 2 and "name files of a folder" in err


def test_duplicates_are_kept_in_one_split_by_default(tmp_path, cli):
    folder = _folder(tmp_path / "digits", per_class=30)
    copies = []
    for cls in CLASSES:  # 6 exact copies per class under other names
        for i in range(6):
            original = folder / f"digit{cls}" / f"{i:03d}.png"
            copy = folder / f"digit{cls}" / f"copy{i}.png"
            shutil.copy(original, copy)
            copies.append((original.relative_to(folder).as_posix(), copy.relative_to(folder).as_posix()))
    out, _ = _train(cli, folder, tmp_path / "runs", "r")
    assert "18 duplicate pair(s) kept whole" in out and "audit: 0 leaked pair(s)" in out
    saved = json.loads((tmp_path / "runs" / "r" / "splits.json").read_text())
    split_of = {k: s for s in ("train", "valid", "test") for k in saved[s]}
    assert all(split_of[a] == split_of[b] for a, b in copies)


def test_a_fixed_split_reports_the_leak_free_score_beside_the_whole(tmp_path, cli):
    root = tmp_path / "fixed"
    _folder(root / "train", per_class=30)
    _folder(root / "test", per_class=10, start=30)
    leaked = []
    for cls in CLASSES:  # 3 training images per class copied into test/
        for i in range(3):
            name = f"leak{i}.png"  # a copy of {i:03d}.png
            shutil.copy(root / "train" / f"digit{cls}" / f"{i:03d}.png", root / "test" / f"digit{cls}" / name)
            leaked.append(f"digit{cls}/{name}")
    out, _ = _train(cli, root, tmp_path / "runs", "r")
    result = _eval(tmp_path / "runs" / "r")
    free = result["leak_free"]
    trained = set(json.loads((tmp_path / "runs" / "r" / "splits.json").read_text())["train"])
    copied = [k for k in leaked if f"train/{k.replace('leak', '00')}" in trained]  # the rest copy valid images
    from_train = len(copied)
    assert from_train >= 5 and result["n_test"] == 39
    assert free["left_out"] == from_train and free["n_test"] == 39 - from_train
    assert "Test Accuracy (leak-free):" in out and f"{from_train} test image(s) that duplicate a training image" in out
    predictions = (tmp_path / "runs" / "r" / "predictions.csv").read_text().splitlines()[1:]
    rows = {r.split(",")[0]: r.split(",") for r in predictions}
    kept = [r for i, r in rows.items() if not any(i.endswith(k) for k in copied)]
    assert free["correct"] == sum(r[1] == r[2] for r in kept)
    code, _, err = cli("report", tmp_path / "runs" / "r", "--no-explain")
    assert code == 0, err
    html = (tmp_path / "runs" / "r" / "report.html").read_text()
    assert 'id="leak-free"' in html and f"{from_train} test images that duplicate a training image" in html


def test_the_audit_names_groups_that_cross_a_fixed_split(tmp_path, cli):
    root = tmp_path / "fixed"
    _patient_folder(root / "train", patients=12)
    _patient_folder(root / "test", patients=6)  # patients 0-5 are in both
    code, out, err = cli("audit", "--data", f"folder:{root}", "--group-by", r"p(\d+)_", "--no-labels", "--output",
                         tmp_path / "a", "--data-root", tmp_path / "data")  # fmt: skip
    assert code == 0, err
    crossing = json.loads((tmp_path / "a" / "audit.json").read_text())["groups_across_splits"]
    held = crossing["held_out_images"]["test"]  # a patient's training images may all be in valid (carved from train/)
    assert crossing["crossing"] == 6 and 0 < held <= 24 and held % 4 == 0
    assert "groups across splits: 6" in out


def test_grouped_split_keeps_groups_whole_and_close_to_the_fraction():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    groups = rng.integers(0, 80, 400).astype(str)
    rest, taken = grouped_split(labels, np.arange(400), groups, 0.2, seed=1)
    assert not set(groups[rest]) & set(groups[taken]) and len(rest) + len(taken) == 400
    assert abs(len(taken) / 400 - 0.2) < 0.05
    singletons = np.arange(400).astype(str)  # one image per group: exactly the stratified counts
    _, single = grouped_split(labels, np.arange(400), singletons, 0.2, seed=1)
    _, strat = stratified_split(labels, np.arange(400), 0.2, seed=1)
    assert np.array_equal(np.bincount(labels[single]), np.bincount(labels[strat]))


def test_duplicate_pairs_join_user_groups():
    joined = merge_groups(5, np.asarray(["a", "a", "b", "c", "c"], dtype=object), [(1, 2)])
    assert joined.tolist() == ["a", "a", "a", "c", "c"]


def test_bootstrap_by_groups_counts_patients_not_images():
    """Five images per patient are one case five times: the patient bootstrap's interval is the one of 40 cases,
    the image bootstrap's is too narrow."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2 == 0
    score = np.clip(y * 0.3 + rng.uniform(0, 0.7, 40), 0, 1)
    lo40, hi40 = bootstrap_auc_ci(y, score, seed=0)
    y5, s5, g5 = np.repeat(y, 5), np.repeat(score, 5), np.repeat(np.arange(40), 5)
    lo_img, hi_img = bootstrap_auc_ci(y5, s5, seed=0)
    lo_grp, hi_grp = bootstrap_auc_ci(y5, s5, seed=0, groups=g5)
    assert hi_img - lo_img < 0.6 * (hi40 - lo40)
    assert abs((hi_grp - lo_grp) - (hi40 - lo40)) < 0.25 * (hi40 - lo40)


def test_a_recorded_folder_run_refuses_a_named_dataset(folder_run):
    _, run = folder_run
    digits = load_source(RunConfig().data.__class__(source="digits"))
    with pytest.raises(CnnlabError, match="is not a folder"):
        read_run_splits(run / "splits.json", digits)


def test_evaluate_data_scores_another_folder_into_its_own_folder(copied, tmp_path, cli):
    folder, run = copied
    before = (run / "eval.json").read_bytes()
    new = _folder(tmp_path / "new", per_class=10, start=100)
    shutil.rmtree(new / "digit2")  # a new folder may hold only some of the run's classes
    code, out, err = cli("evaluate", run, "--data", f"folder:{new}", "--output", tmp_path / "scored")
    assert code == 0, err
    result = json.loads((tmp_path / "scored" / "eval.json").read_text())
    assert result["n_test"] == 20 and result["per_class"]["digit2"]["total"] == 0
    rows = (tmp_path / "scored" / "predictions.csv").read_text().splitlines()[1:]
    assert len(rows) == 20 and {r.split(",")[1] for r in rows} == {"digit0", "digit1"}
    assert (run / "eval.json").read_bytes() == before  # the run's own evaluation is untouched
    (new / "cat").mkdir()
    _digit(0).save(new / "cat" / "x.png")
    code, _, err = cli("evaluate", run, "--data", f"folder:{new}", "--output", tmp_path / "other")
    assert code == 2 and "class folder(s) cat the run was not trained on" in err
    assert not (tmp_path / "other").exists()


def test_evaluate_and_group_options_that_do_not_go_together_are_one_line(copied, tmp_path, cli):
    folder, run = copied
    for args, message in (
        (("evaluate", run, "--output", tmp_path / "o"), "--output and --force go with --data"),
        (("evaluate", run, "--data", f"folder:{folder}", "--skip-changed"), "drop the other options"),
        (("train", "--data", f"folder:{folder}", "--group-by", "x", "--groups", tmp_path / "g.csv", "--dry-run"),
         "not both"),
        (("train", "--data", f"folder:{folder}", "--groups", tmp_path / "absent.csv", "--dry-run"),
         "--groups file not found"),
    ):  # fmt: skip
        code, _, err = cli(*args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
