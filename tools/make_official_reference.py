"""Regenerate tests/data/official_reference/logits.json from the official Mobile-Former code.

    git clone https://github.com/AAboys/MobileFormer /tmp/official   # or any checkout holding its two files
    python tools/make_official_reference.py --official /tmp/official

The official repository has no licence, so nothing of it is copied into mfdeploy: this script imports
``mobile_former.py`` and ``dna_blocks.py`` from the checkout given, as a throwaway package in a temporary
directory, with small stand-ins for the timm names they import (a registry decorator, a builder that calls the
class, DropPath and two mean/std constants). It needs torch only, not timm.

For every size it builds the official model with a 10-class head, loads the deterministic official-keyed
weights of tests/official_reference.py, runs the deterministic input in float64 and in float32 (weights and
input cast), and writes both logits, plus the sha256 of each size's full (1000-class) state_dict key listing,
in the format of the ``mobile_former_<size>_keys.txt`` files.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import official_reference as ref  # noqa: E402

SIZES = ("26m", "52m", "96m", "151m", "214m", "294m", "508m")

_SHIMS = {
    "registry.py": "def register_model(fn):\n    return fn\n",
    "helpers.py": (
        "def build_model_with_cfg(model_cls, variant, pretrained, default_cfg=None, **kwargs):\n"
        "    return model_cls(**kwargs)\n\n\n"
        "def default_cfg_for_features(cfg):\n"
        "    return cfg\n"
    ),
    "layers.py": (
        "import torch\n\n\n"
        "class DropPath(torch.nn.Module):\n"
        "    def __init__(self, drop_prob=0.0):\n"
        "        super().__init__()\n"
        "        self.drop_prob = drop_prob\n\n"
        "    def forward(self, x):\n"
        "        if self.drop_prob == 0.0 or not self.training:\n"
        "            return x\n"
        "        keep = 1 - self.drop_prob\n"
        "        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)\n"
        "        return x.div(keep) * mask\n"
    ),
}


def _timm_stub() -> None:
    """mobile_former.py imports four constants from timm.data; provide them if timm is not installed."""
    try:
        importlib.import_module("timm.data")
        return
    except ImportError:
        pass
    timm, data = types.ModuleType("timm"), types.ModuleType("timm.data")
    data.IMAGENET_DEFAULT_MEAN, data.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    data.IMAGENET_INCEPTION_MEAN, data.IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    timm.data = data
    sys.modules.update({"timm": timm, "timm.data": data})


def import_official(checkout: Path, workdir: Path) -> types.ModuleType:
    """Import the checkout's mobile_former.py as ``_official_mf.mobile_former`` (relative imports shimmed)."""
    package = workdir / "_official_mf"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("mobile_former.py", "dna_blocks.py"):
        (package / name).write_text((checkout / name).read_text())
    for name, text in _SHIMS.items():
        (package / name).write_text(text)
    _timm_stub()
    sys.path.insert(0, str(workdir))
    return importlib.import_module("_official_mf.mobile_former")


def build(module: types.ModuleType, size: str, num_classes: int) -> nn.Module:
    with contextlib.redirect_stdout(io.StringIO()):  # the official builders print every block and the model
        return getattr(module, f"mobile_former_{size}")(num_classes=num_classes).eval()


def official_commit(checkout: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout holding mobile_former.py, dna_blocks.py")
    parser.add_argument("--commit", help="the official commit to record (default: git rev-parse HEAD of --official)")
    parser.add_argument("--out", type=Path, default=ref.LOGITS_FILE)
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    with tempfile.TemporaryDirectory() as tmp:
        module = import_official(args.official.resolve(), Path(tmp))
        sizes = {}
        for size in SIZES:
            full_model = build(module, size, 1000)
            full = full_model.state_dict()
            model = build(module, size, ref.NUM_CLASSES)
            weights = ref.official_weights((k, tuple(v.shape)) for k, v in model.state_dict().items())
            logits = {}
            for dtype, name in ((torch.float64, "float64"), (torch.float32, "float32")):
                cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
                model.to(dtype).load_state_dict(cast, strict=True)
                with torch.no_grad():
                    logits[name] = model(ref.official_input(dtype)).tolist()
            sizes[size] = {
                "state_dict_keys_sha256": ref.listing_sha256(full),
                "state_dict_entries": len(full),
                "params": sum(p.numel() for p in full_model.parameters()),
                "logits": logits,
            }
            print(size, "done", file=sys.stderr)
    header = {
        "what": "logits of the official Mobile-Former (github AAboys/MobileFormer) on the deterministic weights "
        "and input of tests/official_reference.py, float64 and float32",
        "official_commit": args.commit or official_commit(args.official),
        "regenerate": "python tools/make_official_reference.py --official <checkout of AAboys/MobileFormer>",
        "torch": torch.__version__,
        "num_classes": ref.NUM_CLASSES,
        "input_shape": list(ref.INPUT_SHAPE),
        "weight_seed": ref.WEIGHT_SEED,
        "input_seed": ref.INPUT_SEED,
        "keys_sha256": "sha256 of the 1000-class state_dict listing, 'key<TAB>(shape)' per line, official order",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"header": header, "sizes": sizes}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
