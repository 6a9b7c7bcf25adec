"""Models leaving eager PyTorch: exported files with parity checks (`exporter`), their int8 versions and
the check those must pass (`int8`), the prediction backends
that `evaluate` and `predict` choose between by measurement (`backends`), and the latency table a person
deploying to a device wants (`benchmark`). Torch-free prediction from an exported file is
`cnnlab.predict.onnx`, outside this package so that importing it never imports torch."""

from cnnlab.export.exporter import FORMATS, export_run

__all__ = ["FORMATS", "export_run"]
