"""One runner interface over PyTorch, ONNX Runtime, TensorRT and Core ML."""
