"""The HTML report of a real run opens in headless Chromium with no errors, every image decoding."""

import json
import shutil
from pathlib import Path

import pytest

from cnnlab.config import RunConfig, with_overrides
from cnnlab.pipeline import train

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# as root on these machines Chromium needs these; the network flags stop it from calling home
CHROMIUM_ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
SECTIONS = [
    "summary",
    "curves",
    "per-class",
    "confusion",
    "roc",
    "calibration",
    "samples",
    "top-losses",
    "data",
    "inside",
]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg = with_overrides(with_overrides(RunConfig(), "data", source="digits"), "model", name="mlp")
    cfg = with_overrides(with_overrides(cfg, "train", epochs=4), "evaluation", positive="8")
    runs = tmp_path_factory.mktemp("runs")
    return train(cfg, runs_dir=runs, name="digits", log=lambda _: None).run_dir


def test_train_writes_report_with_binary_block(digits_run):
    ev = json.loads((digits_run / "eval.json").read_text())
    b = ev["binary"]
    assert b["positive"] == "8" and b["threshold_rule"] == "sensitivity:0.95"
    assert b["valid_at_threshold"]["sensitivity"] >= 0.95  # the rule holds where it was applied
    assert 0 < b["auc_ci95"][0] <= b["auc"] <= b["auc_ci95"][1] <= 1
    html = (digits_run / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert all(f'id="{s}"' in html for s in SECTIONS)


def test_report_changes_positive_class_and_draws_readers(cli, digits_run, tmp_path):
    readers = tmp_path / "readers.csv"
    readers.write_text("name,sensitivity,specificity\nreader A,0.9,0.95\nreader B,0.97,0.85\n")
    code, out, err = cli("report", digits_run, "--positive", "3", "--threshold-rule", "youden", "--readers", readers)
    assert code == 0, err
    ev = json.loads((digits_run / "eval.json").read_text())
    assert ev["binary"]["positive"] == "3" and ev["binary"]["threshold_rule"] == "youden"
    code, _, err = cli("report", digits_run, "--positive", "cat")
    assert code == 2 and "unknown positive class 'cat'" in err


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium not installed (make test installs it as root)")
def test_report_renders_in_headless_chromium(digits_run, tmp_path):
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, chromium_sandbox=False)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto((digits_run / "report.html").as_uri(), wait_until="load")
        decoded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
        sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    # one image per figure, ROC and PR included, the audit's findings (the real digits hold 4 duplicate pairs)
    # and inside the model (an MLP: attributions, deletion, embedding)
    assert len(decoded) == 12 and all(decoded)
    assert sections == SECTIONS
    assert all(u.startswith(("file:", "data:")) for u in requests)
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_compare_two_runs(cli, digits_run, tmp_path):
    cfg = with_overrides(with_overrides(RunConfig(), "data", source="digits"), "model", name="simple_cnn_bn")
    other = train(with_overrides(cfg, "train", epochs=2), runs_dir=tmp_path, name="cnn", log=lambda _: None,
                  report=False).run_dir  # fmt: skip
    out = tmp_path / "compare.html"
    code, stdout, err = cli("compare", digits_run, other, "--output", out)
    assert code == 0, err
    html = out.read_text()
    assert "simple_cnn_bn" in html and "mlp" in html and html.count("<tr>") == 3
    code, _, err = cli("compare", digits_run, other, "--output", out)
    assert code == 2 and "already exists" in err
