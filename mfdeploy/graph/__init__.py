"""ONNX graph helpers (producers, consumers, order) and the deployment rules every exported graph obeys."""
