"""How far one backend's logits are from the reference's: the figures every report uses."""

from __future__ import annotations

import numpy as np


def _topk(logits: np.ndarray, k: int) -> np.ndarray:
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float | int]:
    """Max/mean abs error, max relative error, mean cosine similarity, top-1/top-5 agreement
    (the reference's top-1 class among the candidate's top-k), NaN/Inf counts."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}")
    nan = int(np.isnan(candidate).sum())
    inf = int(np.isinf(candidate).sum())
    finite = np.nan_to_num(candidate, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(finite - reference)
    if nan or inf:
        diff = np.where(np.isfinite(candidate), diff, np.inf)
    scale = np.maximum(np.abs(reference), 1e-6 * max(1.0, float(np.abs(reference).max(initial=0.0))))
    ref_norm = np.linalg.norm(reference, axis=1)
    cand_norm = np.linalg.norm(finite, axis=1)
    cosine = np.sum(reference * finite, axis=1) / np.maximum(ref_norm * cand_norm, 1e-30)
    ref_top1 = _topk(reference, 1)[:, 0]
    top1 = float(np.mean(_topk(finite, 1)[:, 0] == ref_top1)) if len(reference) else 1.0
    top5 = float(np.mean([r in row for r, row in zip(ref_top1, _topk(finite, 5))])) if len(reference) else 1.0
    return {
        "max_abs_error": float(diff.max(initial=0.0)),
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "max_rel_error": float((diff / scale).max(initial=0.0)),
        "cosine": float(np.mean(cosine)) if len(cosine) else 1.0,
        "top1_agreement": top1,
        "top5_agreement": top5,
        "nan_count": nan,
        "inf_count": inf,
        "samples": int(len(reference)),
    }


def topk_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 and top-5 accuracy of ``logits`` (images x classes) against the true class indices ``labels``:
    the share of images whose class is the highest logit, and among the five highest."""
    if not len(labels):
        raise ValueError("accuracy of no images")
    ranked = _topk(np.asarray(logits), 5)
    top1 = float(np.mean(ranked[:, 0] == labels))
    top5 = float(np.mean([label in row for label, row in zip(labels, ranked)]))
    return top1, top5


def logit_scale(reference: np.ndarray) -> float:
    """The largest finite |logit| of the reference: the magnitude that FP32 rounding errors grow with, so
    verification limits are stated relative to it (a non-finite logit must not make every limit infinite)."""
    values = np.abs(np.asarray(reference, dtype=np.float64))
    return float(values[np.isfinite(values)].max(initial=0.0))


def tolerance(atol: float, rtol: float, scale: float) -> float:
    """The largest abs error allowed on logits of magnitude up to ``scale``: numpy's allclose rule, with the
    case's largest |logit| standing in for each element's own."""
    return atol + rtol * scale
