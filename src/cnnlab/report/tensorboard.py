"""The test result in a run's TensorBoard log (`--logger tensorboard`): accuracy, the confusion matrix and
sample predictions as images, beside the training curves `training/tensorboard.py` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cnnlab.evaluate import plots
from cnnlab.evaluate.analysis import read_predictions
from cnnlab.report.html import N_SAMPLES, prediction_grid
from cnnlab.runs import RunFile
from cnnlab.training.tensorboard import tensorboard_logger


def log_evaluation(run_dir: Path, source, *, epoch: int) -> Path:
    """Add the test result of `run_dir` (eval.json, predictions.csv) to its TensorBoard log: test accuracy,
    the confusion matrix and sample predictions, as images. Returns the log folder."""
    ev = json.loads((Path(run_dir) / RunFile.EVAL).read_text())
    test = read_predictions(Path(run_dir) / RunFile.PREDICTIONS)
    logger = tensorboard_logger(Path(run_dir))
    logger.log_metrics({"test/accuracy": ev["accuracy"]}, step=epoch)
    confusion = plots.plot_confusion_matrix(np.array(ev["confusion_matrix"]), test.class_names).figure
    samples = prediction_grid(test, source, np.arange(min(N_SAMPLES, len(test.ids))))
    for tag, fig in (("test/confusion_matrix", confusion), ("test/sample_predictions", samples)):
        logger.experiment.add_image(tag, _pixels(fig), global_step=epoch, dataformats="HWC")
    logger.finalize("success")
    return Path(logger.log_dir)


def _pixels(fig) -> np.ndarray:
    """A matplotlib Figure as an RGB array (drawn on its own Agg canvas: no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy import: matplotlib (drawing only)

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
