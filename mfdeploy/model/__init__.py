"""The reference Mobile-Former in PyTorch, all seven sizes, written to export to plain ONNX."""

from mfdeploy.model.config import CONFIGS, DEFAULT_SIZE, SIZES, MobileFormerConfig, get_config
from mfdeploy.model.mobileformer import MobileFormer, build_model

__all__ = ["CONFIGS", "DEFAULT_SIZE", "SIZES", "MobileFormer", "MobileFormerConfig", "build_model", "get_config"]
