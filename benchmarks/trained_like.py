"""Weights that look trained to an exporter: the benchmarks' stand-in for a real checkpoint.

A seed-initialised Mobile-Former has every bias 0 and every norm 1/0. A simplifier drops an Add of zeros and
coremltools merges equal LayerNorms, so such a model exports to fewer ops than any trained checkpoint does.
"""

from __future__ import annotations

import torch


def perturbed(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic nudged (in place), so that no bias is 0 and no two norms are equal."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    return model
