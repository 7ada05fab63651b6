"""Rendering a ``convc.profile.Profile``: terminal table (rich when installed), JSON and CSV (the
plot is convc/report_plot.py). The ``convc profile`` subcommand that prints them is convc/cli/profile.py."""
from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

from convc.profile import CONVENTION, Layer, Profile

# --- numbers ---------------------------------------------------------------------------------


def count(n: float | None) -> str:
    """4089184256 -> '4.09 G'; counts use decimal prefixes."""
    if n is None:
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)}"


def nbytes(n: float | None) -> str:
    """Bytes with binary prefixes: 11239424 -> '10.72 MiB'."""
    if n is None:
        return "-"
    for div, unit in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def shape(s: Sequence[int]) -> str:
    return "x".join(map(str, s)) if s else "scalar"


def ellipsize(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width // 2 - 1] + "…" + text[-(width - width // 2):]


# --- the table -------------------------------------------------------------------------------


def _columns(p: Profile) -> list[tuple[str, str]]:
    """(header, alignment) of the layer table."""
    cols = [("#", ">"), ("layer", "<"), ("op", "<"), ("output", "<"), ("params", ">"), ("MACs", ">"),
            ("share of time" if p.measured else "share of MACs", ">"), ("other FLOPs", ">"), ("weights", ">"),
            ("output bytes", ">")]
    if p.measured:
        cores = p.peak.cores if p.peak else "all"
        cols += [("time ms", ">"), ("GFLOP/s", ">"), ("% 1-core peak", ">"), (f"% {cores}-core peak", ">")]
    return cols


def _row(p: Profile, index: int | str, l: Layer, width: int) -> list[str]:
    row = [str(index), ellipsize(l.name, width), l.op + ("*" if l.unmodelled else ""), shape(l.output_shape),
           count(l.params) if l.params else "", count(l.macs) if l.macs else "", percent(p.share(l)),
           count(l.other_flops) if l.other_flops else "", nbytes(l.weight_bytes) if l.weight_bytes else "",
           nbytes(l.output_bytes)]
    if p.measured:
        gf = l.gflops_per_second
        row += [f"{1e3 * (l.seconds or 0):.3f}", f"{gf:.1f}" if gf else "",
                f"{p.peak.percent(gf):.0f}%" if gf and p.peak else "",
                f"{p.peak.percent(gf, True):.0f}%{SLOW_MARK if p.is_slow(l) else ''}" if gf and p.peak else ""]
    return row


SLOW_MARK = "!"


def slow_line(p: Profile, shown: Sequence[Layer]) -> list[str]:
    """The legend of the slow-layer mark, with what the marked layers cost."""
    slow = [l for l in shown if p.is_slow(l)]
    if not slow:
        return []
    secs = sum(l.seconds or 0.0 for l in slow)
    share = f", {100 * secs / p.total_seconds:.1f}% of the time" if p.total_seconds else ""
    return [f"{SLOW_MARK} below {100 * p.SLOW_FRACTION:.0f}% of the {p.peak.cores}-core FMA peak: "
            f"{len(slow)} layer{'s' if len(slow) > 1 else ''} with MACs{share}"]


def _total_row(p: Profile) -> list[str]:
    row = ["", "TOTAL", f"{len(p.layers)} layers", "", count(p.total_params), count(p.total_macs), "100.0%",
           count(p.total_other_flops), nbytes(p.total_weight_bytes), nbytes(sum(l.output_bytes for l in p.layers))]
    if p.measured:
        secs = p.total_seconds or 0.0
        gf = p.total_flops / secs / 1e9 if secs else None
        row += [f"{1e3 * secs:.3f}", f"{gf:.1f}" if gf else "",
                f"{p.peak.percent(gf):.0f}%" if gf and p.peak else "",
                f"{p.peak.percent(gf, True):.0f}%" if gf and p.peak else ""]
    return row


def fused_detail(fused: dict[str, int]) -> str:
    """A by-op row's fused combinations, most frequent first: 'Conv+BatchNormalization+Relu x3, Conv x1'."""
    return ", ".join(f"{k} x{n}" for k, n in sorted(fused.items(), key=lambda kv: -kv[1]))


def _by_op_rows(p: Profile, top: int | None = None) -> tuple[list[tuple[str, str]], list[list[str]]]:
    cols = [("op", "<"), ("layers", ">"), ("params", ">"), ("MACs", ">"), ("MAC share", ">"), ("other FLOPs", ">"),
            ("weights", ">")]
    if p.measured:
        cols += [("time ms", ">"), ("time share", ">"), ("GFLOP/s", ">")]
    cols += [("as (fused layers)", "<")]
    rows = []
    for r in p.by_op(top):
        row = [r["op"], str(r["layers"]), count(r["params"]) if r["params"] else "", count(r["macs"]) if r["macs"] else "",
               percent(r["macs"] / p.total_macs if p.total_macs else 0.0),
               count(r["other_flops"]) if r["other_flops"] else "", nbytes(r["weight_bytes"]) if r["weight_bytes"] else ""]
        if p.measured:
            s = r["seconds"] or 0.0
            row += [f"{1e3 * s:.3f}", percent(s / p.total_seconds if p.total_seconds else 0.0),
                    f"{2 * r['macs'] / s / 1e9:.1f}" if s and r["macs"] else ""]
        row.append(fused_detail(r["fused"]))
        rows.append(row)
    return cols, rows


def plain_table(cols: list[tuple[str, str]], rows: list[list[str]], footer: list[str] | None = None) -> str:
    """Fixed-width text: every column as wide as its widest cell, a rule under the header."""
    all_rows = rows + ([footer] if footer else [])
    widths = [max([len(h)] + [len(r[i]) for r in all_rows]) for i, (h, _) in enumerate(cols)]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, (_, a), w in zip(cells, cols, widths)).rstrip()

    out = [line([h for h, _ in cols]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if footer:
        out += ["  ".join("-" * w for w in widths), line(footer)]
    return "\n".join(out)


def header_lines(p: Profile, width: int = 100) -> list[str]:
    stats = f", plus {count(p.total_bn_stats)} ({p.total_bn_stats:,}) BN running statistics" if p.total_bn_stats else ""
    lines = [f"convc profile: {p.model} (batch {p.batch})",
             (f"  MACs {count(p.total_macs)} (FLOPs = 2 x MACs = {count(p.total_flops)}), "
              f"other-op FLOPs {count(p.total_other_flops)}"),
             f"  params {count(p.total_params)} ({p.total_params:,}){stats}",
             *textwrap.wrap(CONVENTION, width, initial_indent="  ", subsequent_indent="  ")]
    if p.measured:
        secs = p.total_seconds or 0.0
        lines.append(f"  measured: {1e3 * secs:.3f} ms per run, {p.total_flops / secs / 1e9 if secs else 0:.1f} GFLOP/s "
                     "(the sum of the layers' medians over the same runs)")
        if p.wall_seconds:
            lines.append(f"  a run took {1e3 * p.wall_seconds:.3f} ms as the caller timed it (median, with the call's "
                         "overhead)")
        if p.peak:
            lines.append(f"  peak: {p.peak.single_core_gflops:.1f} GFLOP/s on one core, {p.peak.all_core_gflops:.1f} on "
                         f"{p.peak.cores} (FMA loop, {p.peak.cpu})")
    lines += [f"  warning: {w}" for w in p.warnings]
    return lines


def memory_lines(p: Profile) -> list[str]:
    m = p.memory
    vs_bound = f"{100 * m.arena_bytes / m.lower_bound_bytes:.1f}% of the lower bound" if m.lower_bound_bytes else ""
    # at most 80 characters a line: the report must fit a terminal
    saved = f"{100 * m.saving_bytes / m.activation_bytes:.1f}% less than no reuse" if m.activation_bytes else ""
    rows = [("weights (as compiled, after folding)", nbytes(m.weight_bytes), ""),
            ("activations, each in its own buffer", nbytes(m.activation_bytes), ""),
            ("lower bound (most bytes live at once)", nbytes(m.lower_bound_bytes), ""),
            ("planned arena peak", nbytes(m.arena_bytes), vs_bound),
            ("saving", nbytes(m.saving_bytes), saved),
            ("inputs and outputs (caller's arrays)", nbytes(m.io_bytes), "")]
    w = max(len(r[0]) for r in rows)
    return ["Memory"] + [f"  {a:<{w}}  {b:>10}  {c}".rstrip() for a, b, c in rows]


MAX_NOTES = 12


def note_lines(p: Profile, limit: int | None = MAX_NOTES) -> list[str]:
    lines = []
    if p.unmodelled:
        lines.append("Not modelled (* above; their other-op FLOPs are unknown, not zero):")
        lines += [f"  {u}" for u in p.unmodelled]
    if p.notes:
        lines.append(f"Pass notes: why a rewrite did not apply ({len(p.notes)})")
        shown = p.notes if limit is None else p.notes[:limit]
        lines += [f"  {op}: {why}" for op, why in shown]
        if len(shown) < len(p.notes):
            lines.append(f"  ... and {len(p.notes) - len(shown)} more (--format json lists them all)")
    if p.folded:
        lines.append(f"Evaluated at compile time or unused (not in the table): {', '.join(p.folded)}")
    return lines


def int8_lines(p: Profile) -> list[str]:
    """The int8 layers of a QDQ model: each weight's bytes as float32 and as int8 (with its scales)."""
    if not p.int8:
        return []
    f32, i8 = sum(w.float_bytes for w in p.int8), sum(w.int8_bytes for w in p.int8)
    lines = [f"int8 layers ({len(p.int8)}): weights {nbytes(f32)} as float32, {nbytes(i8)} as int8, "
             f"{nbytes(f32 - i8)} saved ({100 * (f32 - i8) / f32:.1f}%)" if f32 else f"int8 layers ({len(p.int8)})"]
    names = ["".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in x.node)
             for x in p.int8]  # names from the model are data: no terminal escapes
    w = max(len(n) for n in names)
    for name, x in zip(names, p.int8):
        scales = "per-channel" if x.per_channel else "per-tensor"
        lines.append(f"  {name:<{w}}  {x.op_type:<7} {shape(x.shape):<16} {scales:<11} {nbytes(x.float_bytes):>10} "
                     f"-> {nbytes(x.int8_bytes):>10}")
    return lines


def render_text(p: Profile, top: int | None = None, by_op: bool = False, width: int = 32) -> str:
    parts = ["\n".join(header_lines(p)), ""]
    if by_op:
        cols, rows = _by_op_rows(p, top)
        parts += ["By op type", plain_table(cols, rows)]
        if top and top < len(p.by_op()):
            parts.append(f"({len(rows)} costliest of {len(p.by_op())} op types shown)")
        parts.append("")
    else:
        layers = list(enumerate(p.layers, 1))
        if top:
            index = {l.name: i for i, l in layers}
            layers = [(index[l.name], l) for l in p.top(top)]
        rows = [_row(p, i, l, width) for i, l in layers]
        parts += [plain_table(_columns(p), rows, _total_row(p))]
        if top and top < len(p.layers):
            parts.append(_top_line(p, [l for _, l in layers]))
        parts += slow_line(p, [l for _, l in layers])
        parts.append("")
    parts += ["\n".join(memory_lines(p))]
    if p.int8:
        parts += ["", "\n".join(int8_lines(p))]
    notes = note_lines(p)
    if notes:
        parts += ["", "\n".join(notes)]
    return "\n".join(parts) + "\n"


def _top_line(p: Profile, shown: list[Layer]) -> str:
    return (f"({len(shown)} costliest of {len(p.layers)} layers shown, {100 * sum(p.share(l) for l in shown):.1f}% "
            f"of the {'time' if p.measured else 'MACs'}; the TOTAL row is the whole model)")


# Abbreviations of op names in the rich table (fused layers like Conv+BatchNormalization+Add+Relu
# must fit a terminal); the plain table, csv and json keep the full names.
OP_ABBREVIATIONS = {"BatchNormalization": "BN", "GlobalAveragePool": "GAvgPool", "GlobalMaxPool": "GMaxPool",
                    "AveragePool": "AvgPool", "ConvTranspose": "ConvT", "LeakyRelu": "LRelu",
                    "HardSigmoid": "HSigmoid", "HardSwish": "HSwish", "LogSoftmax": "LogSmax",
                    "Softmax": "Softmax", "InstanceNormalization": "IN", "Unsqueeze": "Unsqz"}

# the columns the rich table leaves out first when the terminal is narrow, in that order ("% all-core
# peak" stands for the "% N-core peak" column of N > 1 cores)
OPTIONAL_COLUMNS = ("other FLOPs", "output bytes", "weights", "% all-core peak", "params", "output", "GFLOP/s",
                    "time share", "MAC share", "% 1-core peak")
# text columns the rich table narrows (ellipsizing their cells) before it leaves out any column: (header,
# the least width), widened in this order when there is room
NARROWABLE_COLUMNS = (("layer", 12), ("op", 13), ("as (fused layers)", 14))


def abbreviate_op(op: str) -> str:
    """'Conv+BatchNormalization+Relu' -> 'Conv+BN+Relu' (every op name in the text)."""
    return re.sub(r"[A-Za-z]+", lambda m: OP_ABBREVIATIONS.get(m.group(0), m.group(0)), op)


def _cell_width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def fit_columns(cols: list[tuple[str, str]], rows: list[list[str]], width: int,
                optional: Sequence[str] = OPTIONAL_COLUMNS,
                narrowable_columns: Sequence[tuple[str, int]] = NARROWABLE_COLUMNS) -> tuple[list[int], list[int]]:
    """Which columns of a table fit ``width`` terminal columns, and how wide each is: every column as
    wide as its widest cell and its header's longest word (headers wrap between words, never inside
    one), ``optional`` columns left out in that order until the table fits, then the layer and op
    columns (``narrowable_columns``: name, least width) narrowed (their cells are ellipsized).
    Returns (kept column indices, their widths)."""
    natural = [max([max(len(w) for w in h.split()) if h.strip() else 1] + [_cell_width(r[i]) for r in rows])
               for i, (h, _) in enumerate(cols)]
    keep = list(range(len(cols)))
    names = [h for h, _ in cols]
    narrowable = {names.index(name): least for name, least in narrowable_columns if name in names}
    widths = [min(w, narrowable[k]) if k in narrowable else w for k, w in enumerate(natural)]

    def total() -> int:  # rich's box: a border and 2 spaces of padding per column
        return sum(widths[k] for k in keep) + 3 * len(keep) + 1

    for name in optional:  # leave out columns while even the narrowest text columns do not fit
        if total() <= width:
            break
        for k in keep:
            if names[k] == name or (name == "% all-core peak" and names[k].startswith("% ")
                                    and names[k] != "% 1-core peak"):
                keep.remove(k)
                break
    for k in narrowable:  # then give the text columns what is left, up to their natural width
        if k in keep and total() < width:
            widths[k] = min(natural[k], widths[k] + width - total())
    return keep, [widths[k] for k in keep]


def _sayer(console: Any) -> Any:
    def say(text: str) -> None:  # wrapped between words, continuation lines indented
        for line in text.splitlines():
            for part in textwrap.wrap(line, console.width - 1, subsequent_indent="    ") or [""]:
                console.print(part, highlight=False, soft_wrap=True)
    return say


def _rich_table(title: str, cols: list[tuple[str, str]], rows: list[list[str]], keep: list[int],
                widths: list[int], footer: list[str] | None = None) -> Any:
    from rich.table import Table
    table = Table(title=title, show_footer=footer is not None, header_style="bold")
    for k, w in zip(keep, widths):
        h, a = cols[k]
        table.add_column(textwrap.fill(h, w), justify="right" if a == ">" else "left", footer=footer[k] if footer else "",
                         no_wrap=True, overflow="ellipsis", min_width=w, max_width=w)
    for r in rows:
        table.add_row(*[ellipsize(r[k], w) for k, w in zip(keep, widths)])
    return table


# the training table's columns left out first in a narrow terminal, and the text columns it narrows
TRAIN_OPTIONAL_COLUMNS = ("opt state", "grads", "output", "saved", "params", "upd ms")
TRAIN_NARROWABLE_COLUMNS = (("layer", 12), ("op", 8))


def render_train_rich(p: Any, top: int | None = None, file: Any = None, width: int | None = None) -> None:
    """``convc profile --train`` on a terminal: convc/train_profile.py's report in a rich table that
    fits the terminal like the inference one (optional columns left out and named, long names
    ellipsized, no word broken)."""
    from rich.console import Console

    from convc.train_profile import header_lines as train_header, memory_lines as train_memory
    from convc.train_profile import table as train_table
    from convc.train_profile import top_line as train_top_line
    console = Console(file=file, width=width)
    say = _sayer(console)
    for line in train_header(p):
        say(line)
    names, rows = train_table(p, top)
    cols = [(h, "<" if h in ("layer", "op") else ">") for h in names]
    keep, widths = fit_columns(cols, rows, console.width, TRAIN_OPTIONAL_COLUMNS, TRAIN_NARROWABLE_COLUMNS)
    console.print(_rich_table("Layers of the training step", cols, rows, keep, widths))
    left_out = [cols[k][0] for k in range(len(cols)) if k not in keep]
    if left_out:
        say(f"(left out to fit: {', '.join(left_out)}; --format csv has every column)")
    if top and top < len(p.layers):
        say(train_top_line(p, len(rows)))
    say("\n".join(train_memory(p)))


def render_rich(p: Profile, top: int | None = None, by_op: bool = False, file: Any = None,
                width: int | None = None) -> None:
    """The same report through rich (colours, a table that fits the terminal: fused op names
    abbreviated, optional columns left out, no cell broken inside a word)."""
    from rich.console import Console
    console = Console(file=file, width=width)
    say = _sayer(console)
    for line in header_lines(p, min(100, console.width - 1)):
        say(line)
    if by_op:
        cols, rows = _by_op_rows(p, top)
        rows = [[abbreviate_op(r[0])] + r[1:-1] + [abbreviate_op(r[-1])] for r in rows]
        footer = None
        title = "By op type"
    else:
        layers = list(enumerate(p.layers, 1))
        if top:
            index = {l.name: i for i, l in layers}
            layers = [(index[l.name], l) for l in p.top(top)]
        cols, rows, footer, title = _columns(p), [_row(p, i, l, 32) for i, l in layers], _total_row(p), "Layers"
        rows = [r[:2] + [abbreviate_op(r[2])] + r[3:] for r in rows]
    keep, widths = fit_columns(cols, rows + ([footer] if footer else []), console.width)
    console.print(_rich_table(title, cols, rows, keep, widths, footer))
    left_out = [cols[k][0] for k in range(len(cols)) if k not in keep]
    if left_out:
        say(f"(left out to fit: {', '.join(left_out)}; --format csv has every column)")
    if not by_op and top and top < len(p.layers):
        say(_top_line(p, [l for _, l in layers]))
    if not by_op:
        for line in slow_line(p, [l for _, l in layers]):
            say(line)
    say("\n".join(memory_lines(p)))
    if p.int8:
        say("\n".join(int8_lines(p)))
    notes = note_lines(p)
    if notes:
        say("\n".join(notes))


# --- the training step by op type, and its plot (convc profile --train --by-op / --plot) --------

TRAIN_PHASES = ("forward", "backward", "update")


def train_by_op(p: Any, top: int | None = None) -> list[dict[str, Any]]:
    """One row per op type of a ``TrainProfile`` (convc/train_profile.py), costliest first (by
    forward + backward + update time when measured, else by forward + backward MACs); ``top``
    keeps the ``top`` costliest."""
    groups: dict[str, dict[str, Any]] = {}
    for l in p.layers:
        row = groups.setdefault(l.op, {"op": l.op, "layers": 0, "forward_macs": 0, "backward_macs": 0,
                                       "saved_bytes": 0, "param_bytes": 0, "grad_bytes": 0, "state_bytes": 0,
                                       "seconds": {ph: 0.0 for ph in TRAIN_PHASES} if p.measured else None})
        row["layers"] += 1
        for k in ("forward_macs", "backward_macs", "saved_bytes", "param_bytes", "grad_bytes", "state_bytes"):
            row[k] += getattr(l, k)
        if p.measured:
            for ph in TRAIN_PHASES:
                row["seconds"][ph] += l.seconds.get(ph, 0.0)
    if p.measured:
        key = lambda r: (sum(r["seconds"].values()), r["forward_macs"] + r["backward_macs"])
    else:
        key = lambda r: (r["forward_macs"] + r["backward_macs"], r["saved_bytes"])
    rows = sorted(groups.values(), key=key, reverse=True)
    total = sum(sum(l.seconds.get(ph, 0.0) for ph in TRAIN_PHASES) for l in p.layers) if p.measured else p.total_macs
    for r in rows:
        part = sum(r["seconds"].values()) if p.measured else r["forward_macs"] + r["backward_macs"]
        r["share"] = part / total if total else 0.0
    return rows[:top] if top else rows


def _train_by_op_table(p: Any, top: int | None) -> tuple[list[tuple[str, str]], list[list[str]]]:
    cols = [("op", "<"), ("layers", ">"), ("fwd MACs", ">"), ("bwd MACs", ">"),
            ("share of time" if p.measured else "share of MACs", ">"), ("saved", ">"), ("params", ">"), ("grads", ">"),
            ("opt state", ">")]
    if p.measured:
        cols += [("fwd ms", ">"), ("bwd ms", ">"), ("upd ms", ">")]
    rows = []
    for r in train_by_op(p, top):
        row = [r["op"], str(r["layers"]), count(r["forward_macs"]), count(r["backward_macs"]), percent(r["share"]),
               nbytes(r["saved_bytes"]), nbytes(r["param_bytes"]), nbytes(r["grad_bytes"]), nbytes(r["state_bytes"])]
        if p.measured:
            row += [f"{1e3 * r['seconds'][ph]:.3f}" for ph in TRAIN_PHASES]
        rows.append(row)
    return cols, rows


def _train_by_op_note(p: Any, shown: int) -> list[str]:
    kinds = len({l.op for l in p.layers})
    return [f"({shown} costliest of {kinds} op types shown; totals are the whole step)"] if shown < kinds else []


def render_train_by_op_text(p: Any, top: int | None = None) -> str:
    """``convc profile --train --by-op`` piped: the step's header, one row per op type, its memory."""
    from convc.train_profile import header_lines as train_header, memory_lines as train_memory
    cols, rows = _train_by_op_table(p, top)
    lines = train_header(p) + ["", "By op type", plain_table(cols, rows)] + _train_by_op_note(p, len(rows))
    return "\n".join(lines + [""] + train_memory(p)) + "\n"


def render_train_by_op_rich(p: Any, top: int | None = None, file: Any = None, width: int | None = None) -> None:
    """``convc profile --train --by-op`` on a terminal, fitted like the other tables."""
    from rich.console import Console

    from convc.train_profile import header_lines as train_header, memory_lines as train_memory
    console = Console(file=file, width=width)
    say = _sayer(console)
    for line in train_header(p):
        say(line)
    cols, rows = _train_by_op_table(p, top)
    keep, widths = fit_columns(cols, rows, console.width, TRAIN_OPTIONAL_COLUMNS, TRAIN_NARROWABLE_COLUMNS)
    console.print(_rich_table("By op type", cols, rows, keep, widths))
    left_out = [cols[k][0] for k in range(len(cols)) if k not in keep]
    if left_out:
        say(f"(left out to fit: {', '.join(left_out)}; --format csv has every column)")
    for line in _train_by_op_note(p, len(rows)):
        say(line)
    say("\n".join(train_memory(p)))


def train_by_op_json(p: Any, top: int | None = None, indent: int | None = 2) -> str:
    """The training profile as JSON with ``by_op`` rows in place of ``layers`` (totals stay whole-step)."""
    import json
    d = p.to_dict()
    d.pop("layers", None)
    d["by_op"] = train_by_op(p, top)
    if top:
        d["top"] = top
    return json.dumps(d, indent=indent)


TRAIN_BY_OP_CSV = ("op", "layers", "forward_macs", "backward_macs", "saved_bytes", "param_bytes", "grad_bytes",
                   "state_bytes", "share")


def train_by_op_csv(p: Any, top: int | None = None) -> str:
    """One row per op type of the training step (with each phase's seconds when measured)."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    timed = [f"{ph}_seconds" for ph in TRAIN_PHASES] if p.measured else []
    w.writerow(list(TRAIN_BY_OP_CSV) + timed)
    for r in train_by_op(p, top):
        w.writerow([r[c] for c in TRAIN_BY_OP_CSV] + [r["seconds"][ph] for ph in TRAIN_PHASES if p.measured])
    return buf.getvalue()
