"""ONNX export and simplification, the TensorRT engine build, Core ML conversion."""
