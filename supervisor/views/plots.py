"""report.html's charts drawn with matplotlib, to SVG text that goes inline into the page.

On the supervisor's machine, after the run: no display, no network, no font files, no script.
matplotlib's figure API is used without pyplot, so nothing global (a GUI backend, an open figure)
is involved or left behind. What each chart shows is decided in charts.py; here is only how it looks.
"""

from __future__ import annotations

import io
import re

from oomladder.units import format_size
from oomladder.views.charts import MemoryChart, OomMark, TimelineChart, clock

COLOURS = ["#1f6fb2", "#2a9d4b", "#8e44ad", "#d17a00", "#138d90", "#b03a6f", "#5d6d7e"]
SPAN_COLOURS = {"start-up": "#c8cdd2", "training": "#1f6fb2", "lost": "#d64541"}
OOM_COLOUR = "#d64541"
# Text stays text (smaller, selectable, searchable); `$` in a rung's name is not mathematics; the ids in
# two charts on one page must differ, and the same chart must draw the same way twice.
_RC = {"svg.fonttype": "none", "text.parse_math": False, "text.usetex": False, "font.size": 9,
       "axes.spines.top": False, "axes.spines.right": False}


class ChartsUnavailable(RuntimeError):
    """matplotlib is not installed: the page says what to install instead of a chart."""


def _matplotlib():
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError:  # a dependency of oomladder's, but an environment can lose it
        raise ChartsUnavailable("the charts need matplotlib: pip install matplotlib") from None
    return matplotlib


def _figure(width: float, height: float):
    return _matplotlib().figure.Figure(figsize=(width, height), layout="constrained")


def _svg(fig, salt: str) -> str:
    """The figure as an <svg> element to put inline: no XML prologue, no DOCTYPE, no date."""
    matplotlib = _matplotlib()
    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    # The RDF metadata names vocabularies by URL: nothing is fetched, but the page is plainer without it.
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S).strip()


def _size_unit(values: list[int]) -> tuple[float, str]:
    return (2**30, "GiB") if max(values, default=0) >= 2 * 2**30 else (2**20, "MiB")


def draw_memory(chart: MemoryChart):
    """The memory chart as a matplotlib figure (`savefig` writes it as SVG, PNG, PDF...)."""
    with _matplotlib().rc_context(_RC):
        fig = _figure(8.0, 3.6)
        ax = fig.add_subplot()
        values = [p for line in chart.lines for p in line.peaks] + [m.reached for m in chart.ooms if m.reached]
        values += [chart.limit] if chart.limit else []
        values += [p for p in chart.peaks.values() if p]
        scale, unit = _size_unit(values)
        ooms = {m.attempt: m for m in chart.ooms}
        if chart.by_step:
            for i, line in enumerate(chart.lines):
                colour = COLOURS[i % len(COLOURS)]
                ax.plot(line.steps, [p / scale for p in line.peaks], marker="o", markersize=4, color=colour,
                        label=line.label)
                mark = ooms.get(line.attempt)
                if mark is not None and mark.step is not None and mark.peak is not None:
                    # The step that died did not end: its peak (before the failed allocation) is a hollow point.
                    if line.steps:
                        ax.plot([line.steps[-1], mark.step], [line.peaks[-1] / scale, mark.peak / scale],
                                color=colour, linestyle="--", linewidth=1)
                    ax.plot([mark.step], [mark.peak / scale], marker="o", markersize=5, color=colour,
                            markerfacecolor="white", linestyle="none")
                    _oom(ax, mark.step, mark, scale, unit)
            ax.set_xlabel("optimizer step")
            ax.xaxis.get_major_locator().set_params(integer=True)
        else:  # a program that reports no steps: each attempt's peak, one bar each
            numbers = [line.attempt for line in chart.lines]
            heights = [(chart.peaks.get(n) or 0) / scale for n in numbers]
            ax.bar(numbers, heights, color=[COLOURS[i % len(COLOURS)] for i in range(len(numbers))],
                   tick_label=[line.label for line in chart.lines])
            for n in numbers:
                mark = ooms.get(n)
                if mark is not None and mark.peak is not None:
                    _oom(ax, n, mark, scale, unit)
            ax.set_xlabel("attempt (the program reported no steps)")
        if chart.limit:
            ax.axhline(chart.limit / scale, color="#333333", linestyle="--", linewidth=1)
            ax.annotate(chart.limit_label, (1.0, chart.limit / scale), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="#333333")
        ax.set_ylabel(f"peak memory ({unit})")
        ax.set_ylim(bottom=0, top=max(values, default=1) / scale * 1.12)
        if chart.by_step:
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_title("Memory: each attempt's peak at the end of each step", loc="left", fontsize=10)
    return fig


def _oom(ax, x: float, mark: OomMark, scale: float, unit: str) -> None:
    """The failed allocation: from the peak before it to what it would have reached, and an ✕ there."""
    peak, reached = mark.peak, mark.reached
    if peak is None or reached is None:
        return  # the callers draw only the marks that say their peak
    top = reached / scale
    ax.plot([x, x], [peak / scale, top], color=OOM_COLOUR, linestyle=":", linewidth=1.5)
    ax.plot([x], [top], marker="X", markersize=9, color=OOM_COLOUR, linestyle="none")
    where = f"in evaluation after step {x}" if mark.in_evaluation else f"in step {x}"
    tried = f" + {format_size(mark.tried)} tried" if mark.tried else ""
    ax.annotate(f"OOM {where}: {format_size(mark.peak)}{tried}", (x, top), xytext=(6, 0),
                textcoords="offset points", va="center", fontsize=8, color=OOM_COLOUR)


def draw_timeline(chart: TimelineChart):
    with _matplotlib().rc_context(_RC):
        fig = _figure(8.0, 0.9 + 0.55 * max(1, len(chart.lanes)))
        ax = fig.add_subplot()
        for row, lane in enumerate(chart.lanes):
            y = len(chart.lanes) - 1 - row  # attempt 1 at the top
            for span in lane.spans:
                if span.end > span.start:
                    ax.barh(y, span.end - span.start, left=span.start, height=0.5,
                            color=SPAN_COLOURS[span.kind], hatch="//" if span.kind == "lost" else None,
                            edgecolor="white" if span.kind != "lost" else "#8b1e1a", linewidth=0.5)
            for step, at in lane.steps:
                ax.plot([at, at], [y - 0.25, y + 0.25], color="white", linewidth=1)
            for step, at in _some(lane.steps, 12):
                ax.annotate(str(step), (at, y + 0.27), ha="center", va="bottom", fontsize=7, color="#333333")
            end = max((s.end for s in lane.spans), default=0.0)
            ax.annotate(f" {lane.steps_text}", (end, y), va="center", fontsize=8, color="#333333")
        ax.set_yticks(range(len(chart.lanes)), [lane.label for lane in reversed(chart.lanes)])
        ax.set_ylim(-0.6, len(chart.lanes) - 0.3)
        ax.set_xlim(0, max(chart.total, 1.0) * 1.18)  # room for the steps text after the last bar
        from matplotlib.ticker import FuncFormatter, MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 3, 5, 6, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: clock(v)))
        ax.set_xlabel("wall clock since the first attempt started (tick: a step ended; number: its step)")
        from matplotlib.patches import Patch
        ax.legend(handles=[Patch(color=SPAN_COLOURS["start-up"], label="start-up (launch, load, resume)"),
                           Patch(color=SPAN_COLOURS["training"], label="training"),
                           Patch(facecolor=SPAN_COLOURS["lost"], hatch="//", edgecolor="#8b1e1a",
                                 label="lost to the failure")],
                  loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(chart.lanes) < 3 else -0.2), ncols=3,
                  fontsize=8, frameon=False)
        ax.set_title(f"Timeline: {clock(chart.total)} in all; lost to failures {clock(chart.lost_to_failures)}, "
                     f"to restarts {clock(chart.lost_to_restarts)}", loc="left", fontsize=10)
    return fig


def _some(steps: list[tuple[int, float]], most: int) -> list[tuple[int, float]]:
    """At most `most` step numbers to write, the first and last among them: a long run's bar stays readable."""
    if len(steps) <= most:
        return steps
    every = -(-len(steps) // most)
    picked = steps[::every]
    return picked if picked[-1] == steps[-1] else picked[:-1] + [steps[-1]]


def memory_svg(chart: MemoryChart) -> str:
    return _svg(draw_memory(chart), "oomladder-memory")


def timeline_svg(chart: TimelineChart) -> str:
    return _svg(draw_timeline(chart), "oomladder-timeline")
