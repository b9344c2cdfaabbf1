"""Parameter and multiply-add counts, whole-model and per stage, measured with torch's FlopCounterMode.

MAdds count what the paper counts as compute: conv, linear and matmul (FlopCounterMode reports
2 FLOPs per multiply-add for these and ignores elementwise ops). They are counted on the model's own
convs (:func:`~mfdeploy.model.layers.native_grouped_conv`), not on a deployment layout that computes zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mfdeploy.model.layers import native_grouped_conv
from mfdeploy.model.mobileformer import MobileFormer
from mfdeploy.model.stages import stage_modules


@dataclass
class StageStats:
    name: str
    output_shape: list[list[int]]
    params: int
    madds: int


@dataclass
class Complexity:
    size: str
    imgsz: int
    num_classes: int
    params: int
    madds: int
    num_tokens: int
    token_dim: int
    num_heads: int
    paper_params: int
    paper_madds: int
    paper_top1: float
    stages: list[StageStats]

    @property
    def params_vs_paper(self) -> float:
        return self.params / self.paper_params - 1.0

    @property
    def madds_vs_paper(self) -> float:
        return self.madds / self.paper_madds - 1.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["params_vs_paper"] = round(self.params_vs_paper, 4)
        data["madds_vs_paper"] = round(self.madds_vs_paper, 4)
        return data


def _shapes(output: Any) -> list[list[int]]:
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    return [list(t.shape) for t in outputs if isinstance(t, torch.Tensor)]


def measure(model: MobileFormer, imgsz: int = 224) -> Complexity:
    """Count params and MAdds of ``model`` for one ``imgsz`` x ``imgsz`` image."""
    stages = stage_modules(model)
    shapes: dict[str, list[list[int]]] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, _shapes(out)))
        for name, module in stages
    ]
    x = torch.zeros(1, model.in_chans, imgsz, imgsz)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), native_grouped_conv(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    per_module = counter.get_flop_counts()
    root = type(model).__name__

    def madds_of(name: str) -> int:
        return int(sum(per_module.get(f"{root}.{name}", {}).values()) // 2)

    rows = [StageStats("tokens", [list(model.tokens.shape)], model.tokens.numel(), 0)]
    rows += [
        StageStats(name, shapes.get(name, []), sum(p.numel() for p in module.parameters()), madds_of(name))
        for name, module in stages
    ]
    cfg = model.cfg
    return Complexity(
        size=cfg.name,
        imgsz=imgsz,
        num_classes=model.num_classes,
        params=sum(p.numel() for p in model.parameters()),
        madds=int(counter.get_total_flops() // 2),
        num_tokens=cfg.num_tokens,
        token_dim=cfg.token_dim,
        num_heads=cfg.num_heads,
        paper_params=int(round(cfg.paper.params_m * 1e6)),
        paper_madds=int(round(cfg.paper.madds_m * 1e6)),
        paper_top1=cfg.paper.top1,
        stages=rows,
    )
