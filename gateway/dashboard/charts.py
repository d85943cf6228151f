"""Charts as inline SVG, drawn on the server: no JavaScript, nothing fetched from elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

COLOURS = {
    "delivered": "#2e7d32",
    "sent": "#1565c0",
    "undelivered": "#ef6c00",
    "failed": "#c62828",
    "unknown": "#6a1b9a",
    "sending": "#90a4ae",
    "queued": "#f9a825",
    "scheduled": "#fbc02d",
    "expired": "#795548",
    "canceled": "#a1887f",
    "used": "#1565c0",
}


def stacked_bars(
    labels: Sequence[str],
    series: dict[str, Sequence[int]],
    *,
    title: str,
    width: int = 720,
    height: int = 180,
) -> Markup:
    """Bars per label, stacked by series, with a title and a legend (as accessible text)."""
    count = max(len(labels), 1)
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_h = height - 40
    bar_w = (width - 40) / count
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="12" class="axis">{top}</text>',
        f'<line x1="30" y1="{plot_h + 10}" x2="{width}" y2="{plot_h + 10}" class="base"/>',
    ]
    for i, label in enumerate(labels):
        x = 35 + i * bar_w
        y: float = plot_h + 10
        for name, values in series.items():
            value = values[i]
            if not value:
                continue
            h = value / top * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS.get(name, "#455a64")}"><title>{escape(label)}: {value} '
                f"{escape(name)}</title></rect>"
            )
        if count <= 31 and (i % max(count // 8, 1) == 0):
            parts.append(f'<text x="{x:.1f}" y="{height - 12}" class="axis">{escape(label)}</text>')
    parts.append("</svg>")
    legend = " ".join(
        f'<span class="key"><i style="background:{COLOURS.get(n, "#455a64")}"></i>{escape(n)}'
        "</span>"
        for n in series
    )
    return Markup("".join(parts) + f'<p class="legend">{legend}</p>')  # noqa: S704 - escaped above


def bar(used: int, limit: int | None) -> Markup:
    """A usage bar against a limit (none when unlimited)."""
    if limit is None:
        return Markup('<span class="muted">unlimited</span>')
    share = 1.0 if limit == 0 else min(used / limit, 1.0)
    level = "full" if share >= 1 else ("high" if share >= 0.8 else "ok")
    return Markup(  # noqa: S704 - numbers only
        f'<span class="bar {level}" role="img" aria-label="{share:.0%} of the limit">'
        f'<span style="width:{share * 100:.1f}%"></span></span>'
    )
