"""Running a model over images: a trained run's model and its inputs (`infer`), the backend that runs it
fastest here (`backends`: PyTorch or ONNX Runtime, by measurement), a backbone's cached features
(`features`), and torch-free prediction from an exported ONNX file (`onnx`). Importing this package or
`predict.onnx` imports no torch."""
