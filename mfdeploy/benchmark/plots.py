"""The two report charts as PNG bytes: latency (and throughput) against batch size, and a per-device bar
chart. Drawn with matplotlib's object API on the Agg canvas: no pyplot state, no display needed.

Two rules keep the charts honest:

- Outliers (the bar chart; the latency-vs-batch chart has log axes, where one slow cell cannot squash the
  others): in each panel of at least :data:`MIN_BARS_TO_CLIP` bars, a bar longer than
  :data:`OUTLIER_RATIO` times the median of the panel's other bars is an outlier. The axis then ends at
  :data:`CLIP_HEADROOM` times the longest bar that is not one, and each outlier is cut at the axis end
  with its value written on it (:func:`clip_outliers`).
- Timings that are not a device latency (a runner's ``benchmark_caveat``, such as the Core ML MIL
  evaluator's: rows carry it as ``caveat``, the tables as a footnote) are hatched bars and hollow
  markers, and the legend says what that means.
"""

from __future__ import annotations

import io
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mfdeploy.benchmark.stats import fmt_ms

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mfdeploy.benchmark.rows import Row

DPI = 110
OUTLIER_RATIO = 5.0  # a bar this many times the median of the other bars in its panel is an outlier
MIN_BARS_TO_CLIP = 3  # with two bars, "the median of the others" is the other bar: both stay whole
CLIP_HEADROOM = 1.3  # the clipped axis ends this far past the longest bar that is not an outlier
NOT_DEVICE = "not a device latency"
HATCH = "///"


def clip_outliers(values: Sequence[float]) -> tuple[float | None, list[int]]:
    """The axis limit for one panel of bars, and the indices of the bars cut at it: (None, []) when no bar
    is more than :data:`OUTLIER_RATIO` times the median of the others (or there are too few bars)."""
    values = [float(v) for v in values]
    if len(values) < MIN_BARS_TO_CLIP:
        return None, []
    outliers = []
    for index, value in enumerate(values):
        others = statistics.median(values[:index] + values[index + 1 :])
        if others > 0 and value > OUTLIER_RATIO * others:
            outliers.append(index)
    # the shortest bar is never an outlier (the others' median is at least as long), so some bar is kept
    longest_kept = max(v for i, v in enumerate(values) if i not in outliers)
    if not outliers or longest_kept <= 0:
        return None, []
    return CLIP_HEADROOM * longest_kept, outliers


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
    figure = latency_vs_batch_figure(rows)
    return None if figure is None else _png(figure)


def latency_vs_batch_figure(rows: Sequence["Row"]) -> "Figure | None":
    """The figure of :func:`latency_vs_batch`; a series that is not a device latency has hollow markers."""
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
        not_device = any(p.caveat for p in points)
        label = _series_label(device, model, target, devices, models)
        style = dict(
            color=colors[target],
            marker=markers[devices.index(device) % len(markers)],
            linestyle=styles[models.index(model) % len(styles)],
            label=f"{label} ({NOT_DEVICE})" if not_device else label,
            **({"markerfacecolor": "white"} if not_device else {}),
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
    return figure


def _series_label(device: str, model: str, target: str, devices: list[str], models: list[str]) -> str:
    parts = [target]
    if len(models) > 1:
        parts.insert(0, model)
    if len(devices) > 1:
        parts.insert(0, device)
    return " | ".join(parts)


def by_device(rows: Sequence["Row"]) -> bytes | None:
    """Median latency per device (and model), one bar per target, one panel per batch size."""
    figure = by_device_figure(rows)
    return None if figure is None else _png(figure)


def by_device_figure(rows: Sequence["Row"]) -> "Figure | None":
    """The figure of :func:`by_device`: outliers cut at the axis end with their value written on them, and
    timings that are not a device latency hatched (see the module's rules)."""
    from matplotlib.patches import Patch

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
        panel = [row for row in rows if row.batch == batch]
        limit, outliers = clip_outliers([row.p50 for row in panel])
        clipped = {id(panel[i]) for i in outliers}
        for t_index, target in enumerate(targets):
            ys, drawn = [], []
            for g_index, (device, model) in enumerate(groups):
                row = lookup.get((device, model, target, batch))
                if row is not None:
                    ys.append(g_index + (t_index - (len(targets) - 1) / 2) * bar)
                    drawn.append(row)
            if not ys:
                continue
            bars = ax.barh(ys, [row.p50 for row in drawn], height=bar * 0.95, color=colors[target], label=target)
            for patch, row in zip(bars, drawn):
                if row.caveat:
                    patch.set_hatch(HATCH)
                    patch.set_edgecolor("0.15")
                    patch.set_linewidth(0.6)
            labels = ["" if id(row) in clipped else fmt_ms(row.p50) for row in drawn]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
            for y, row in zip(ys, drawn):
                if id(row) in clipped:
                    ax.text(
                        0.985 * limit,
                        y,
                        f"{fmt_ms(row.p50)} ms, clipped \u00bb",
                        ha="right",
                        va="center",
                        fontsize=7,
                        bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "0.4", "linewidth": 0.6},
                    )
        ax.set_yticks(range(len(groups)), [f"{device}\n{model}" for device, model in groups], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median latency, ms" + (" (axis clipped)" if limit is not None else ""))
        ax.set_title(f"batch {batch}")
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.18)
        if limit is not None:
            ax.set_xlim(0, limit)
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if any(row.caveat for row in rows):
        handles.append(Patch(facecolor="white", edgecolor="0.15", hatch=HATCH, label=f"hatched: {NOT_DEVICE}"))
        labels.append(f"hatched: {NOT_DEVICE}")
    figure.legend(handles, labels, loc="outside lower center", ncol=min(6, max(1, len(labels))), fontsize=8)
    figure.suptitle("Median latency by device")
    return figure
