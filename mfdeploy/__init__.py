"""mfdeploy: Mobile-Former from PyTorch to TensorRT and Core ML, with proof at every step."""

__version__ = "0.1.0"
