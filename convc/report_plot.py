"""``convc profile --plot``: MACs, time and the memory plan per layer (and the training step's
phases by op type) drawn with matplotlib (optional: ``pip install convc[plot]``), as PNG, SVG or PDF."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from convc.errors import ConvcError
from convc.profile import Profile
from convc.report import TRAIN_PHASES, count, ellipsize, nbytes


class PlotError(ConvcError):
    """The plot cannot be drawn: a file type other than .png/.svg, or matplotlib is missing."""


def check_plot_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise PlotError(f"--plot {path}: the file name must end in .png or .svg")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError("--plot needs matplotlib, an optional extra: pip install 'convc[plot]' "
                        "(or pip install matplotlib)") from None
    return path


def byte_unit(n: float) -> tuple[float, str]:
    """The divisor and binary unit that show ``n`` bytes as a number between 1 and 1024."""
    for div, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= div:
            return div, unit
    return 1, "B"


def time_unit(seconds: float) -> tuple[float, str]:
    """The factor and unit that show ``seconds`` as a number of at least 1: s, ms or µs."""
    for scale, unit in ((1.0, "s"), (1e3, "ms")):
        if seconds * scale >= 1:
            return scale, unit
    return 1e6, "µs"


MAX_TICK_LABELS = 60  # more layers than this: label every k-th


def _layer_axis(ax: Any, p: Profile) -> None:
    """x ticks '#1 conv1', '#2 pool1', ...: the table's numbering (from 1) and the layer names."""
    n = len(p.layers)
    step = max(1, -(-n // MAX_TICK_LABELS))
    ticks = list(range(1, n + 1, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"#{i} {ellipsize(p.layers[i - 1].name, 20)}" for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(0.5, n + 0.5)
    ax.set_xlabel("layer (# as in the table, execution order)")


def plot(p: Profile, path: str | Path) -> Path:
    """Write MACs (and time) per layer as bars and the memory plan over time to a .png or .svg."""
    return _save(plot_figure, p, path)


def _save(figure: Any, p: Any, path: str | Path) -> Path:
    """Draw ``figure(p)`` into the .png or .svg ``path`` (checked first) and close it."""
    path = check_plot_path(path)
    import matplotlib.pyplot as plt
    fig = figure(p)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _layer_figure(p: Any) -> tuple[Any, Any, list[int]]:
    """A figure of stacked panels, one per layer plot (a time panel when measured) and the memory
    panel, wide enough for the layers' bars; and the bars' x positions (layers from 1)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(p.layers)
    panels = 3 if p.measured else 2
    fig, axes = plt.subplots(panels, 1, figsize=(max(8.0, min(40.0, 0.18 * n + 6)), 4.2 * panels))
    return fig, axes, list(range(1, n + 1))


def plot_figure(p: Profile) -> Any:
    """The matplotlib figure ``plot`` writes: MACs (and time) per layer, the memory plan by step."""
    fig, axes, x = _layer_figure(p)
    ax = axes[0]
    ax.bar(x, [l.macs / 1e6 for l in p.layers], color="tab:blue")
    ax.set_ylabel("MMACs")
    ax.set_title(f"{p.model}: {count(p.total_macs)} MACs (FLOPs = 2 x MACs) per layer")
    _layer_axis(ax, p)
    if p.measured:
        ax = axes[1]
        scale, unit = time_unit(max([l.seconds or 0.0 for l in p.layers] + [p.total_seconds or 0.0]))
        ax.bar(x, [scale * (l.seconds or 0.0) for l in p.layers], color="tab:orange")
        ax.set_ylabel(unit)
        ax.set_title(f"time per layer (median over the runs); the bars sum to "
                     f"{scale * (p.total_seconds or 0):.3g} {unit}")
        _layer_axis(ax, p)
    ax = axes[-1]
    m = p.memory
    div, unit = byte_unit(max([m.arena_bytes, m.lower_bound_bytes, *m.live_bytes, 1]))
    live = [b / div for b in m.live_bytes]
    steps = range(1, len(live) + 1)
    ax.bar(steps, live, width=1.0, alpha=0.5, color="tab:green", label="live bytes at each step")
    ax.axhline(m.arena_bytes / div, color="tab:red", linestyle="--", label=f"planned arena {nbytes(m.arena_bytes)}")
    ax.axhline(m.lower_bound_bytes / div, color="black", linestyle=":",
               label=f"lower bound {nbytes(m.lower_bound_bytes)}")
    ax.set_ylim(0, 1.1 * max([m.arena_bytes / div] + live + [1e-3]))
    ax.set_xlim(0.5, len(live) + 0.5)
    ax.set_xlabel("step (compiled op, execution order, from 1)")
    ax.set_ylabel(unit)
    ax.set_title(f"memory plan: activations {nbytes(m.activation_bytes)} without reuse")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)  # below the axis: covers no line
    fig.tight_layout()
    return fig


def plot_train(p: Any, path: str | Path) -> Path:
    """``convc profile --train --plot``: the training step's MACs (and times) per layer and its memory."""
    return _save(plot_train_figure, p, path)


def plot_train_figure(p: Any) -> Any:
    """Forward and backward MACs per layer (stacked), the forward, backward and update times per layer
    when measured, and the step's memory by kind."""
    fig, axes, x = _layer_figure(p)
    ax = axes[0]
    fwd = [l.forward_macs / 1e6 for l in p.layers]
    ax.bar(x, fwd, color="tab:blue", label="forward")
    ax.bar(x, [l.backward_macs / 1e6 for l in p.layers], bottom=fwd, color="tab:purple", label="backward")
    ax.set_ylabel("MMACs")
    ax.set_title(f"{p.model}, training step at batch {p.batch}: MACs per layer, {count(p.total_macs)} in all "
                 f"(forward {count(p.forward_macs)}, backward {count(p.backward_macs)})")
    ax.legend(loc="upper right", fontsize=8)
    _layer_axis(ax, p)
    if p.measured:
        ax = axes[1]
        per = {ph: [l.seconds.get(ph, 0.0) for l in p.layers] for ph in TRAIN_PHASES}
        total = sum(sum(v) for v in per.values())
        scale, unit = time_unit(max([sum(t) for t in zip(*per.values())] + [total, 0.0]))
        bottom = [0.0] * len(x)
        for ph, color in zip(TRAIN_PHASES, ("tab:blue", "tab:purple", "tab:green")):
            values = [scale * s for s in per[ph]]
            ax.bar(x, values, bottom=bottom, color=color, label=ph)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_ylabel(unit)
        ax.set_title(f"time per layer (median over the runs); the bars sum to {scale * total:.3g} {unit} of the "
                     f"{scale * (p.step_seconds or 0):.3g} {unit} step")
        ax.legend(loc="upper right", fontsize=8)
        _layer_axis(ax, p)
    ax = axes[-1]
    m = p.memory
    kinds = [("parameters", m.param_bytes), ("optimizer state", m.optimizer_state_bytes),
             ("BN running statistics", m.running_stats_bytes), ("parameter gradients", m.grad_bytes),
             ("saved activations", m.saved_bytes), ("arena liveness lower bound", m.lower_bound_bytes),
             ("planned arena", m.arena_bytes), ("batch, labels, loss", m.io_bytes)]
    div, unit = byte_unit(max([b for _, b in kinds] + [1]))
    ax.barh(range(len(kinds)), [b / div for _, b in kinds], color="tab:green")
    ax.set_yticks(range(len(kinds)))
    ax.set_yticklabels([k for k, _ in kinds])
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.set_title(f"memory of the step: peak {nbytes(m.peak_bytes)} = parameters, optimizer state and statistics "
                 f"+ planned arena + the caller's arrays")
    fig.tight_layout()
    return fig
