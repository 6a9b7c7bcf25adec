"""Evaluation of a trained run: predictions, per-class accuracy, eval.json, and predicting new images."""
