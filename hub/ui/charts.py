"""Charts as inline SVG, drawn on the server: no script, no chart library, no build.

Each function is pure and returns markup whose every text is escaped. Colours come
from CSS classes (`chart-series-N`), so the light and dark schemes style them; a
chart has a title and a description for screen readers, and the page shows the same
figures as a table beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 12, 12, 28


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    css: str  # a class name the stylesheet colours


def _nice_max(value: float) -> float:
    """A round axis top at or above `value`."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10
    for factor in (1, 2, 2.5, 5, 10):
        if value <= step * factor:
            return step * factor
    return value


def _frame(chart_id: str, title: str, description: str, body: list[str]) -> Markup:
    t_id, d_id = f"{chart_id}-title", f"{chart_id}-desc"
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(t_id)} {escape(d_id)}">'
        f'<title id="{escape(t_id)}">{escape(title)}</title>'
        f'<desc id="{escape(d_id)}">{escape(description)}</desc>' + "".join(body) + "</svg>"
    )


def _axes(top: float, x_labels: Sequence[str]) -> list[str]:
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    out = []
    for fraction in (0.0, 0.5, 1.0):
        y = PAD_TOP + plot_h * (1 - fraction)
        out.append(
            f'<line class="chart-grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" '
            f'y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="chart-label" x="{PAD_LEFT - 6}" y="{y + 4:.1f}" '
            f'text-anchor="end">{escape(_number(top * fraction))}</text>'
        )
    if x_labels:
        count = len(x_labels)
        for index, label in enumerate(x_labels):
            if not label:
                continue
            x = PAD_LEFT + (plot_w * (index + 0.5) / count)
            out.append(
                f'<text class="chart-label" x="{x:.1f}" y="{HEIGHT - 8}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    return out


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(
    chart_id: str, title: str, series: Sequence[Series], x_labels: Sequence[str]
) -> Markup:
    """Lines over equally spaced points (the samples); `x_labels` name some of them."""
    points = max((len(s.values) for s in series), default=0)
    top = _nice_max(max((max(s.values, default=0) for s in series), default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    body = _axes(top, x_labels)
    for s in series:
        if not s.values:
            continue
        coords = []
        for index, value in enumerate(s.values):
            x = PAD_LEFT + (plot_w * (index + 0.5) / max(points, 1))
            y = PAD_TOP + plot_h * (1 - value / top)
            coords.append(f"{x:.1f},{y:.1f}")
        body.append(
            f'<polyline class="chart-line {escape(s.css)}" fill="none" '
            f'points="{" ".join(coords)}"><title>{escape(s.name)}</title></polyline>'
        )
        if len(coords) == 1:  # one sample draws no line: show it as a point
            cx, cy = coords[0].split(",")
            body.append(
                f'<circle class="chart-point {escape(s.css)}" cx="{cx}" cy="{cy}" r="4">'
                f"<title>{escape(s.name)}</title></circle>"
            )
    latest = ", ".join(f"{s.name} {_number(s.values[-1])}" for s in series if s.values)
    description = (
        f"{points} samples; latest: {latest}."
        if points
        else "No samples yet: the hub samples the fleet every 5 minutes."
    )
    return _frame(chart_id, title, description, body)


def bar_chart(
    chart_id: str, title: str, values: Sequence[int], x_labels: Sequence[str], css: str
) -> Markup:
    top = _nice_max(max(values, default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    body = _axes(top, x_labels)
    count = max(len(values), 1)
    gap = plot_w / count * 0.2
    for index, value in enumerate(values):
        height = plot_h * value / top
        x = PAD_LEFT + plot_w * index / count + gap / 2
        label = x_labels[index] if index < len(x_labels) else ""
        body.append(
            f'<rect class="chart-bar {escape(css)}" x="{x:.1f}" '
            f'y="{PAD_TOP + plot_h - height:.1f}" width="{plot_w / count - gap:.1f}" '
            f'height="{height:.1f}"><title>{escape(label)}: {value}</title></rect>'
        )
    description = f"{sum(values)} in all over {len(values)} periods."
    return _frame(chart_id, title, description, body)
