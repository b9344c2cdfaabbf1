"""The two report charts as PNG bytes: latency (and throughput) against batch size, and a per-device bar
chart. Drawn with matplotlib's object API on the Agg canvas: no pyplot state, no display needed."""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mfdeploy.benchmark.rows import Row

DPI = 110


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk: the same figures give the same bytes whatever matplotlib wrote them.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _colors(targets: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {target: palette(i % 10) for i, target in enumerate(dict.fromkeys(targets))}


def latency_vs_batch(rows: Sequence["Row"]) -> bytes | None:
    """Median latency (bars to p90) and throughput against batch size, one line per device x model x target."""
    if not rows:
        return None
    series: dict[tuple[str, str, str], list["Row"]] = defaultdict(list)
    for row in rows:
        series[(row.device, row.model, row.target)].append(row)
    colors = _colors([row.target for row in rows])
    devices = list(dict.fromkeys(row.device for row in rows))
    models = list(dict.fromkeys(row.model for row in rows))
    markers = "osD^vP*X"
    styles = ["-", "--", ":", "-."]
    figure = _figure(12, 5.2)
    latency_ax, throughput_ax = figure.subplots(1, 2)
    for (device, model, target), points in series.items():
        points = sorted(points, key=lambda r: r.batch)
        batches = [p.batch for p in points]
        p50 = [p.p50 for p in points]
        upper = [max(0.0, p.p90 - p.p50) for p in points]
        style = dict(
            color=colors[target],
            marker=markers[devices.index(device) % len(markers)],
            linestyle=styles[models.index(model) % len(styles)],
            label=_series_label(device, model, target, devices, models),
        )
        latency_ax.errorbar(batches, p50, yerr=[[0.0] * len(upper), upper], capsize=3, **style)
        throughput_ax.plot(batches, [p.throughput or 0.0 for p in points], **style)
    all_batches = sorted({row.batch for row in rows})
    for ax in (latency_ax, throughput_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_batches, [str(b) for b in all_batches])
        ax.minorticks_off()
        ax.set_xlabel("batch size")
        ax.grid(True, which="major", alpha=0.3)
    latency_ax.set_yscale("log")
    throughput_ax.set_yscale("log")  # a phone and a GPU server differ by orders of magnitude
    latency_ax.set_ylabel("latency per batch, ms (median; bar to p90)")
    latency_ax.set_title("Latency vs batch")
    throughput_ax.set_ylabel("images per second (batch / mean latency)")
    throughput_ax.set_title("Throughput vs batch")
    handles, labels = latency_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(3, max(1, len(labels))), fontsize=8)
    return _png(figure)


def _series_label(device: str, model: str, target: str, devices: list[str], models: list[str]) -> str:
    parts = [target]
    if len(models) > 1:
        parts.insert(0, model)
    if len(devices) > 1:
        parts.insert(0, device)
    return " | ".join(parts)


def by_device(rows: Sequence["Row"]) -> bytes | None:
    """Median latency per device (and model), one bar per target, one panel per batch size."""
    if not rows:
        return None
    batches = sorted({row.batch for row in rows})
    targets = list(dict.fromkeys(row.target for row in rows))
    colors = _colors(targets)
    groups = list(dict.fromkeys((row.device, row.model) for row in rows))
    height = 1.2 + 0.28 * len(groups) * max(1, len(targets))
    figure = _figure(5.2 * len(batches) + 1.5, max(3.0, height))
    axes = figure.subplots(1, len(batches), squeeze=False)[0]
    bar = 0.8 / max(1, len(targets))
    lookup = {(row.device, row.model, row.target, row.batch): row for row in rows}
    for ax, batch in zip(axes, batches):
        for t_index, target in enumerate(targets):
            ys, widths = [], []
            for g_index, (device, model) in enumerate(groups):
                row = lookup.get((device, model, target, batch))
                if row is not None:
                    ys.append(g_index + (t_index - (len(targets) - 1) / 2) * bar)
                    widths.append(row.p50)
            if ys:
                bars = ax.barh(ys, widths, height=bar * 0.95, color=colors[target], label=target)
                ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        ax.set_yticks(range(len(groups)), [f"{device}\n{model}" for device, model in groups], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median latency, ms")
        ax.set_title(f"batch {batch}")
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.18)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    figure.legend(handles, labels, loc="outside lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    figure.suptitle("Median latency by device")
    return _png(figure)
