"""The report: markdown tables, the targets of the benchmark issue, and a chart.

./scripts/bench writes it after a run; to draw it again from a run's figures, without
running the benchmark (the chart alone, or with --tables docs/benchmarks.md too):

    .venv/bin/python -m benchmarks.report --from docs/benchmarks/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or with -m: siblings are modules

from catalog import ROOT, WORKLOADS

if TYPE_CHECKING:
    from collections.abc import Callable

REPORT = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks" / "chart.png"

# Each servekit row is also given against the peer that does the same job in the
# same run: the stdlib's socketserver for the sync models, the bare Protocol
# echo on the same loop for the async engine.
REFERENCE = {
    "servekit async (uvloop)": "uvloop protocol",
    "servekit async (asyncio)": "asyncio protocol",
}
SYNC_REFERENCE = {
    "udp": "stdlib UDPServer",
    "tcp": "stdlib threading (base)",
    "unix": "stdlib threading (base)",
}

Cells = dict[tuple[str, str], dict[str, Any]]


def brief(cell: dict[str, Any]) -> str:
    """One line for the progress log."""
    m = cell["median"]
    if not m:
        return "failed: " + "; ".join(cell["failures"])[:200]
    parts = [
        f"{m.get('rps', 0):>9,.0f} req/s",
        f"cpu {_num(m.get('cpu_us_per_req'))} us/req",
        f"p99 {_num(m.get('p99_us'))} us",
        f"errors {m.get('errors', 0):.0f}",
    ]
    if "kib_per_conn" in m:
        parts.append(f"{m['kib_per_conn']:.1f} KiB/conn")
    if "served_in_deadline" in m:
        parts.append(f"{m['served_in_deadline']:.0f} served in 1 s")
    if "slow_connected_mean" in m:
        parts.append(f"max {_num(m.get('max_us'))} us")
        parts.append(f"{m['slow_connected_mean']:.0f} slow clients connected")
    return ", ".join(parts)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _reference(server: str, proto: str) -> str:
    return REFERENCE.get(server, SYNC_REFERENCE[proto])


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def _fig(cells: Cells, workload: str, server: str, key: str) -> float | None:
    """A cell's median ``key``; None if that cell was not measured."""
    value = cells.get((workload, server), {}).get("median", {}).get(key)
    return None if value is None else float(value)


def _versus(cells: Cells, workload: str, mine: str, theirs: str, key: str) -> float | None:
    """``mine``'s median ``key`` over ``theirs``', in the same run."""
    return _ratio(_fig(cells, workload, mine, key), _fig(cells, workload, theirs, key))


def _spread(
    cells: Cells, workload: str, mine: str, theirs: str, key: str
) -> tuple[float, float] | None:
    """The least and the most ``mine``/``theirs`` could be, over every pair of their runs:
    how far the noise of this machine reaches around the median ratio."""

    def runs(server: str) -> list[float]:
        found = cells.get((workload, server), {}).get("runs") or []
        return [float(r[key]) for r in found if isinstance(r, dict) and r.get(key)]

    a, b = runs(mine), runs(theirs)
    if not a or not b:
        return None
    return min(a) / max(b), max(a) / min(b)


def _table(workload: Any, rows: list[dict[str, Any]], cells: Cells) -> list[str]:
    out = [f"### {workload.title}", ""]
    if workload.mode == "idle":
        out += ["| server | held | KiB per connection | peak RSS (MiB) |", "|---|---:|---:|---:|"]
        for cell in rows:
            m = cell.get("median", {})
            out.append(
                f"| {_name(cell)} | {_num(m.get('held'), 0)} | "
                f"{_num(m.get('kib_per_conn'))} | {_mib(m)} |"
            )
        return [*out, ""]
    if workload.slow:
        return [*out, *_slow_table(workload, rows)]
    if workload.mode == "burst":
        out += ["| server | served within 1 s | served | errors |", "|---|---:|---:|---:|"]
        for cell in rows:
            m = cell.get("median", {})
            out.append(
                f"| {_name(cell)} | {_num(m.get('served_in_deadline'), 0)} | "
                f"{_num(m.get('served'), 0)} | {_num(m.get('errors'), 0)} |"
            )
        return [*out, ""]
    out += [
        (
            "| server | req/s | p50 (us) | p99 (us) | CPU per request (us) | peak RSS (MiB) "
            "| errors | vs peer: req/s, CPU |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for cell in rows:
        m = cell.get("median", {})
        versus = ""
        if cell.get("servekit") and m:
            peer = _reference(cell["server"], workload.proto)
            other = cells.get((workload.key, peer), {}).get("median", {})
            r, c = (
                _ratio(m.get("rps"), other.get("rps")),
                _ratio(m.get("cpu_us_per_req"), other.get("cpu_us_per_req")),
            )
            if r is not None:
                versus = f"x{r:.2f}, x{_num(c, 2)} of {peer}"
        out.append(
            f"| {_name(cell)} | {_num(m.get('rps'), 0)} | {_num(m.get('p50_us'))} | "
            f"{_num(m.get('p99_us'))} | {_num(m.get('cpu_us_per_req'))} | {_mib(m)} | "
            f"{_num(m.get('errors'), 0)} | {versus} |"
        )
    return [*out, ""]


def _slow_table(workload: Any, rows: list[dict[str, Any]]) -> list[str]:
    """The ordinary clients' service beside the slow ones, and how many slow ones were on."""
    out = [
        (
            f"{workload.conns} clients echo 64-byte lines, closed-loop, while {workload.slow:,} "
            "others, connected first, each send a byte a second of a line that never ends and "
            "reconnect as soon as the server cuts them. Measured over "
            f"{workload.duration:g} s; a request not answered within 10 s is an error "
            "(a timeout) and its client reconnects. Slow clients count as connected from the "
            "handshake until the server cuts them, waiting in its backlog included: at the "
            "window's start, and the least, the mean and the most during it."
        ),
        "",
        (
            "| server | req/s | p50 (ms) | p99 (ms) | max (ms) | errors "
            "| slow connected: start, least, mean, most | slow cut by the server |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in rows:
        m = cell.get("median", {})
        ms = {
            key: None if m.get(key) is None else m[key] / 1000
            for key in ("p50_us", "p99_us", "max_us")
        }
        slow = ", ".join(
            _num(m.get(f"slow_connected_{key}"), 0) for key in ("start", "min", "mean", "max")
        )
        out.append(
            f"| {_name(cell)} | {_num(m.get('rps'), 0)} | {_num(ms['p50_us'])} | "
            f"{_num(ms['p99_us'])} | {_num(ms['max_us'])} | {_num(m.get('errors'), 0)} | "
            f"{slow} | {_num(m.get('slow_cuts'), 0)} |"
        )
    return [*out, ""]


def _name(cell: dict[str, Any]) -> str:
    name = f"**{cell['server']}**" if cell.get("servekit") else cell["server"]
    if "na" in cell:
        return f"{name} (n/a: {cell['na']})"
    if cell.get("failures") and not cell.get("runs"):
        return f"{name} (failed)"
    return name


def _mib(m: dict[str, Any]) -> str:
    return _num(m["peak_rss_kib"] / 1024) if "peak_rss_kib" in m else "-"


# -- the targets of the benchmark issue ------------------------------------------------------


def targets(cells: Cells) -> list[tuple[str, str, bool | None, str]]:
    """(target, what was measured, met?, the ratio's range over the runs) for each
    target; met is None where not measured."""

    fig = partial(_fig, cells)
    # The spread of the ratio versus() worked out last: the one in check()'s arguments.
    last: list[tuple[float, float] | None] = [None]

    def versus(workload: str, mine: str, theirs: str, key: str) -> float | None:
        last[0] = _spread(cells, workload, mine, theirs, key)
        return _versus(cells, workload, mine, theirs, key)

    found: list[tuple[str, str, bool | None, str]] = []

    def check(text: str, value: float | None, ok: Callable[[float], bool], unit: str) -> None:
        spread, last[0] = last[0], None
        shown = "-" if spread is None else f"{spread[0]:.2f} to {spread[1]:.2f}"
        if value is None:
            found.append((text, "not measured", None, shown))
        else:
            found.append((text, f"{value:.2f}{unit}", ok(value), shown))

    for conns, limit in (("64", 1.15), ("1000", 1.25)):
        check(
            f"async on uvloop: CPU/req within {limit}x of a uvloop Protocol at {conns}",
            versus(f"echo-{conns}", "servekit async (uvloop)", "uvloop protocol", "cpu_us_per_req"),
            lambda r, limit=limit: r <= limit,
            "x",
        )
    check(
        "async on uvloop: under 3 KiB per idle connection at 10,000",
        fig("idle-10000", "servekit async (uvloop)", "kib_per_conn"),
        lambda v: v < 3,
        " KiB",
    )
    for conns in ("64", "1000"):
        check(
            f"async on asyncio: at least as fast as an asyncio Protocol at {conns} (req/s)",
            versus(f"echo-{conns}", "servekit async (asyncio)", "asyncio protocol", "rps"),
            lambda r: r >= 1,
            "x",
        )
    for conns in ("1", "64", "1000"):
        for mine, theirs in (
            ("servekit threads (base)", "stdlib threading (base)"),
            ("servekit threads (stream)", "stdlib threading (stream)"),
        ):
            check(
                f"{mine} at least as fast as {theirs} at {conns} (req/s)",
                versus(f"echo-{conns}", mine, theirs, "rps"),
                lambda r: r >= 1,
                "x",
            )
        check(
            f"pool within 5% of threads at {conns} (req/s)",
            versus(f"echo-{conns}", "servekit pool", "servekit threads (stream)", "rps"),
            lambda r: r >= 0.95,
            "x",
        )
    check(
        "pool at least 2x stdlib threading on connection churn (req/s)",
        versus("churn-64", "servekit pool", "stdlib threading (base)", "rps"),
        lambda r: r >= 2,
        "x",
    )
    text = "pool: beside 1,000 slow clients, the p99 of 64 echo clients under 1 s"
    slow = cells.get(("slow-1000", "servekit pool"), {}).get("median")
    if slow and slow.get("p99_us") is None:
        found.append((text, "none answered", False, "-"))
    else:
        p99 = fig("slow-1000", "servekit pool", "p99_us")
        check(text, None if p99 is None else p99 / 1e6, lambda v: v < 1, " s")
    for conns in ("1", "64"):
        check(
            f"UDP sync at least as fast as the stdlib UDPServer at {conns} (req/s)",
            versus(f"udp-{conns}", "servekit sync", "stdlib UDPServer", "rps"),
            lambda r: r >= 1,
            "x",
        )
        check(
            f"UDP async on uvloop: CPU/req within 1.1x of a uvloop DatagramProtocol at {conns}",
            versus(f"udp-{conns}", "servekit async (uvloop)", "uvloop protocol", "cpu_us_per_req"),
            lambda r: r <= 1.1,
            "x",
        )
    for (workload, server), cell in sorted(cells.items()):
        if workload == "burst-1000" and cell.get("servekit"):
            check(
                f"burst: {server} serves all 1,000 within 1 s",
                fig(workload, server, "served_in_deadline"),
                lambda v: v >= 1000,
                "",
            )
    return found


def context(cells: Cells) -> list[tuple[str, str]]:
    """Ratios from the same run that say why a target is missed: what a coroutine
    costs by itself (the floor peers), and what the default limits cost."""

    versus = partial(_versus, cells)

    rows: list[tuple[str, str]] = []

    def add(text: str, value: float | None) -> None:
        rows.append((text, "not measured" if value is None else f"{value:.2f}x"))

    for conns in ("64", "1000"):
        for loop in ("uvloop", "asyncio"):
            add(
                f"{loop} coroutine floor vs {loop} Protocol at {conns}: CPU/req",
                versus(
                    f"echo-{conns}", f"{loop} coroutine floor", f"{loop} protocol", "cpu_us_per_req"
                ),
            )
            add(
                f"servekit async ({loop}) vs the {loop} coroutine floor at {conns}: CPU/req",
                versus(
                    f"echo-{conns}",
                    f"servekit async ({loop})",
                    f"{loop} coroutine floor",
                    "cpu_us_per_req",
                ),
            )
    for conns in ("1", "64"):
        add(
            f"uvloop datagram coroutine floor vs uvloop DatagramProtocol at {conns}: CPU/req",
            versus(f"udp-{conns}", "uvloop coroutine floor", "uvloop protocol", "cpu_us_per_req"),
        )
        add(
            f"servekit async (uvloop) vs the uvloop datagram coroutine floor at {conns}: CPU/req",
            versus(
                f"udp-{conns}",
                "servekit async (uvloop)",
                "uvloop coroutine floor",
                "cpu_us_per_req",
            ),
        )
    for conns in ("1", "64", "1000"):
        for variant, peer in (("base, no idle_timeout", "base"), ("stream, no limits", "stream")):
            add(
                f"servekit threads ({variant}) vs stdlib threading ({peer}) at {conns}: req/s",
                versus(
                    f"echo-{conns}",
                    f"servekit threads ({variant})",
                    f"stdlib threading ({peer})",
                    "rps",
                ),
            )
    return rows


def write(results: dict[str, Any], chart_path: Path = CHART) -> None:
    cells: Cells = {(c["workload"], c["server"]): c for c in results["cells"]}
    meta = results["meta"]
    lines = [
        "# Benchmarks",
        "",
        (
            "Made by `./scripts/bench` (see [benchmarks/README.md](../benchmarks/README.md)); "
            "do not edit by hand. Every cell is a freshly started server pinned to core 0, "
            "driven by the C closed-loop load generator pinned to core 1; figures are medians of "
            f"{meta['runs']} run(s) of {meta['duration']} s after {meta['warmup']} s of warm-up "
            "(1 ms per connection if longer). "
            "CPU per request is the server's user and system time (its whole process tree, from "
            "/proc) over the measured window, divided by the requests answered in it."
        ),
        "",
        f"Machine: {machine(meta)}, Linux {meta['kernel']}, Python {meta['python']}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + f"; {meta['date']}; the run took {meta['seconds']} s.",
        "",
        "![requests per second by server](benchmarks/chart.png)",
        "",
        "## Targets",
        "",
        (
            "The median ratio decides; the range is that ratio over every pair of the two "
            "servers' runs, to show how far this machine's noise reaches."
        ),
        "",
        "| target | measured | met | range over the runs |",
        "|---|---:|:---:|---:|",
    ]
    for text, measured, met, spread in targets(cells):
        verdict = "-" if met is None else "yes" if met else "no"
        lines.append(f"| {text} | {measured} | {verdict} | {spread} |")
    lines += [
        "",
        "## Why, measured in the same run",
        "",
        (
            "The misses above are explained in [performance.md](performance.md); these ratios "
            "are its evidence. A *coroutine floor* peer is the least an `await reader.read()` "
            "API can cost: a bare Protocol that wakes one task per connection through a "
            "future, nothing else; for datagrams, a DatagramProtocol that answers each from "
            "a task of its own."
        ),
        "",
        "| ratio | measured |",
        "|---|---:|",
    ]
    lines += [f"| {text} | {measured} |" for text, measured in context(cells)]
    lines += ["", "## Results", ""]
    for workload in WORKLOADS:
        rows = [c for c in results["cells"] if c["workload"] == workload.key]
        if rows:
            lines += _table(workload, rows, cells)
    REPORT.write_text("\n".join(lines) + "\n")
    chart(results, chart_path)


# -- the chart -------------------------------------------------------------------------------


#: The chart's columns: a workload each, headed short enough for a quarter of the README's
#: width (about 800 px); the tables in docs/benchmarks.md have every workload in full.
CHART_PANELS = {
    "echo-64": "TCP echo\n64 clients",
    "echo-1000": "TCP echo\n1,000 clients",
    "churn-64": "TCP churn\n64 clients",
    "udp-64": "UDP echo\n64 clients",
}
SERVEKIT_COLOUR, PEER_COLOUR, NOTE_COLOUR = "#d9480f", "#868e96", "#495057"
#: Drawn 8 inches wide at 100 dpi, as the README shows it, and saved at twice that for
#: sharp text: every font size below is what a reader sees at that width.
CHART_WIDTH_IN, CHART_DPI = 8.0, 200


def machine(meta: dict[str, Any]) -> str:
    """The run's machine: its CPU model and core count. Runs before the core count was
    recorded (meta "cores") take it from this machine's /proc/cpuinfo."""
    cores = meta.get("cores") or _cores()
    return f"{meta['cpu']}, {cores} cores" if cores else str(meta["cpu"])


def _cores() -> int | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return os.cpu_count()
    return sum(line.startswith("processor") for line in lines) or os.cpu_count()


def _runs(count: int) -> str:
    return "1 run" if count == 1 else f"{count} runs"


def _short(value: float) -> str:
    """146k, 4.3k, 364: a bar's figure in a quarter of the width."""
    if value >= 9_950:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def chart(results: dict[str, Any], path: Path = CHART) -> None:
    """Requests per second on four workloads, servekit beside the peers: one row per server,
    named once, and a column per workload, each with its own scale and its figures written
    on the bars; the machine and the date of the run below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells: Cells = {(c["workload"], c["server"]): c for c in results["cells"]}
    rps = {key: _fig(cells, *key, "rps") for key in cells}
    panels = [k for k in CHART_PANELS if any(v for (w, _), v in rps.items() if w == k)]
    if not panels:
        return
    servekit = {c["server"] for c in results["cells"] if c.get("servekit")}
    servers = list(
        dict.fromkeys(s for (w, s), v in rps.items() if w in panels and v)
    )  # run order, for ties
    # Most requests per second on top, by the first column, then by the next for the
    # servers it lacks (the sync model at 64 connections, the UDP server on TCP).
    servers.sort(key=lambda s: [-(rps.get((k, s)) or 0) for k in panels])
    rows = range(len(servers))

    fig, axes = plt.subplots(
        1,
        len(panels),
        sharey=True,
        squeeze=False,
        figsize=(CHART_WIDTH_IN, 1.6 + 0.26 * len(servers)),
    )
    for ax, key in zip(axes[0], panels, strict=True):
        values = [rps.get((key, s)) for s in servers]
        top = max(v for v in values if v)
        for row in rows[::2]:  # bands, to follow a row across the columns
            ax.axhspan(row - 0.5, row + 0.5, color="#f1f3f5", zorder=0)
        ax.barh(
            rows,
            [v or 0 for v in values],
            height=0.7,
            color=[SERVEKIT_COLOUR if s in servekit else PEER_COLOUR for s in servers],
            zorder=2,
        )
        for row, value in zip(rows, values, strict=True):
            ax.text(
                (value or 0) + top * 0.03,
                row,
                _short(value) if value else "-",
                va="center",
                fontsize=8.5,
                color="black" if value else NOTE_COLOUR,
            )
        ax.set_xlim(0, top * 1.42)
        ax.set_title(CHART_PANELS[key], fontsize=10, fontweight="bold")
        ax.xaxis.set_visible(False)
        ax.tick_params(axis="y", length=0, labelsize=9.5)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
    first = axes[0][0]
    first.set_yticks(list(rows), servers)
    first.set_ylim(len(servers) - 0.5, -0.5)
    for label, server in zip(first.get_yticklabels(), servers, strict=True):
        if server in servekit:
            label.set_color(SERVEKIT_COLOUR)
            label.set_fontweight("bold")
    meta = results["meta"]
    fig.suptitle(
        "Requests per second: servekit (orange) beside its peers",
        fontsize=12,
        fontweight="bold",
    )
    fig.text(
        0.5,
        0.008,
        f"Run of {meta['date']} on {machine(meta)}; Linux {meta['kernel']}, "
        f"Python {meta['python']}.\nMedian of {_runs(meta['runs'])}; 64-byte messages; the "
        "server on one core, the C load generator on another; - not measured.",
        ha="center",
        va="bottom",
        fontsize=8.5,
        linespacing=1.5,
        color=NOTE_COLOUR,
    )
    fig.tight_layout(rect=(0, 0.055, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=CHART_DPI)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Draw the report again from a results.json, without running the benchmark."
    )
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, help="a results.json of a run"
    )
    parser.add_argument("--chart", type=Path, default=CHART, help=f"default {CHART}")
    parser.add_argument(
        "--tables", action="store_true", help=f"write {REPORT} again too (its tables, targets)"
    )
    args = parser.parse_args()
    results = json.loads(args.source.read_text())
    if args.tables:
        write(results, args.chart)
    else:
        chart(results, args.chart)


if __name__ == "__main__":
    main()
