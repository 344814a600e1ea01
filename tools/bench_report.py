#!/usr/bin/python3
"""Turn Google Benchmark JSON output into a markdown table and a PNG plot.

Input: one or more files written with ``--benchmark_format=json`` (or
``--benchmark_out=FILE --benchmark_out_format=json``).

Benchmark names follow the kern convention
``<family>/<impl>/<dtype>/<shape>[/threads:<n>]``, e.g.
``gemm/kern/f32/1024x1024x1024/threads:1``.  Google Benchmark suffixes such
as ``/real_time`` or ``/min_time:0.5`` are ignored.

Each table row is one (family, dtype, shape, threads); each impl gets a column
with its metric (GFLOPS, else GBps, else items/s, bytes/s or real time), a
``%peak`` column when it reports the ``peak_frac`` counter, and, with
``--baseline``, a speed ratio against the baseline impl.

Example:
    tools/bench_report.py run.json --baseline openblas \\
        --out-md report.md --out-png report.png --filter '^gemm/'

Exit status 2 on unusable input (unreadable or invalid files, nothing matching
the filter, unknown baseline).  Requires matplotlib only for ``--out-png``
(the shebang targets Debian's python3, which has it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

MISSING = "–"


class ReportError(Exception):
    """A user-facing error; main() prints it and exits with status 2."""


@dataclass(frozen=True)
class Metric:
    """How to read, scale and label one kind of benchmark result."""

    key: str  # JSON key in a benchmark entry
    unit: str  # axis label / table unit after scaling
    scale: float = 1.0  # multiplier applied to the raw JSON value
    higher_is_better: bool = True


# Metrics in order of preference: the first one a row's entries report wins.
METRICS = (
    Metric("GFLOPS", "GFLOP/s"),
    Metric("GBps", "GB/s"),
    Metric("items_per_second", "Mitems/s", 1e-6),
    Metric("bytes_per_second", "GB/s", 1e-9),
    Metric("real_time", "ms", higher_is_better=False),
)

# Google Benchmark time units expressed in milliseconds (for real_time).
TIME_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}

# Name components Google Benchmark appends that are not part of the kern name.
GB_SUFFIX = re.compile(
    r"^(real_time|process_time|manual_time"
    r"|(min_time|min_warmup_time|iterations|repeats):.*)$"
)
THREADS = re.compile(r"^threads:(\d+)$")


@dataclass
class Row:
    """One table row: a (family, dtype, shape, threads) and its impl results."""

    family: str
    dtype: str
    shape: str
    threads: int
    # impl -> list of candidate benchmark entries (repeats, several files)
    candidates: dict[str, list[dict]] = field(default_factory=dict)
    metric: Metric | None = None
    # impl -> (metric value, peak_frac or None), filled by resolve_row()
    results: dict[str, tuple[float, float | None]] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Input
# --------------------------------------------------------------------------


def load_files(paths: list[str]) -> list[dict]:
    """Read and parse every JSON file; unreadable files are skipped with a warning."""
    documents = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            print(f"bench_report: warning: cannot read {path}: {err.strerror}",
                  file=sys.stderr)
            continue
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ReportError(f"{path}: invalid JSON: {err}") from err
        if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
            raise ReportError(f"{path}: not Google Benchmark JSON "
                              "(no top-level 'benchmarks' list)")
        documents.append(doc)
    if not documents:
        raise ReportError("no input file could be read")
    return documents


def run_name(entry: dict) -> str:
    """The benchmark name without any aggregate suffix such as '_median'."""
    if "run_name" in entry:
        return entry["run_name"]
    name = entry["name"]
    suffix = "_" + entry.get("aggregate_name", "")
    return name.removesuffix(suffix) if entry.get("run_type") == "aggregate" else name


def representative_entries(benchmarks: list[dict]) -> list[dict]:
    """Pick the entries of one file to report.

    Per benchmark name, the 'median' aggregate when the file has one, else the
    plain iteration entries.  Failed runs are dropped.
    """
    by_name: dict[str, list[dict]] = {}
    for entry in benchmarks:
        if isinstance(entry, dict) and "name" in entry and not entry.get("error_occurred"):
            by_name.setdefault(run_name(entry), []).append(entry)
    chosen = []
    for entries in by_name.values():
        medians = [e for e in entries if e.get("aggregate_name") == "median"]
        iterations = [e for e in entries if e.get("run_type", "iteration") != "aggregate"]
        chosen.extend(medians or iterations)
    return chosen


def parse_name(name: str) -> tuple[str, str, str, str, int]:
    """Split a kern benchmark name into (family, impl, dtype, shape, threads).

    Missing parts become '-'; extra '/'-separated parts stay in the shape.
    """
    threads = 1
    parts = []
    for part in name.split("/"):
        if match := THREADS.match(part):
            threads = int(match.group(1))
        elif not GB_SUFFIX.match(part):
            parts.append(part)
    parts += ["-"] * (4 - len(parts))
    family, impl, dtype = parts[:3]
    return family, impl, dtype, "/".join(parts[3:]), threads


def collect_rows(documents: list[dict], pattern: re.Pattern | None) -> list[Row]:
    """Group the selected entries of all files into table rows."""
    rows: dict[tuple, Row] = {}
    for doc in documents:
        for entry in representative_entries(doc["benchmarks"]):
            name = run_name(entry)
            if pattern and not pattern.search(name):
                continue
            family, impl, dtype, shape, threads = parse_name(name)
            key = (family, dtype, shape, threads)
            row = rows.setdefault(key, Row(*key))
            row.candidates.setdefault(impl, []).append(entry)
    return [resolve_row(row) for row in rows.values()]


# --------------------------------------------------------------------------
# Metric selection
# --------------------------------------------------------------------------


def metric_value(entry: dict, metric: Metric) -> float | None:
    """The scaled value of `metric` in `entry`, or None when absent."""
    raw = entry.get(metric.key)
    if not isinstance(raw, (int, float)) or isinstance(raw, bool):
        return None
    scale = metric.scale
    if metric.key == "real_time":
        scale *= TIME_UNIT_MS.get(entry.get("time_unit", "ns"), 1e-6)
    return raw * scale


def resolve_row(row: Row) -> Row:
    """Choose the row's metric and, per impl, the best of its candidate entries."""
    entries = [e for impl_entries in row.candidates.values() for e in impl_entries]
    row.metric = next((m for m in METRICS
                       if any(metric_value(e, m) is not None for e in entries)), None)
    if row.metric is None:
        return row
    best = max if row.metric.higher_is_better else min
    for impl, impl_entries in row.candidates.items():
        scored = [(metric_value(e, row.metric), e) for e in impl_entries]
        scored = [(v, e) for v, e in scored if v is not None]
        if scored:
            value, entry = best(scored, key=lambda pair: pair[0])
            peak = entry.get("peak_frac")
            row.results[impl] = (value, peak if isinstance(peak, (int, float)) else None)
    return row


def natural_key(text: str) -> tuple:
    """Sort key comparing the digit runs of `text` numerically ('64' < '1024')."""
    return tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok)
                 for tok in re.findall(r"\d+|\D+", text))


def row_sort_key(row: Row) -> tuple:
    return (row.family, row.dtype, row.threads, natural_key(row.shape))


def impl_order(rows: list[Row], baseline: str | None) -> list[str]:
    """Impls in order of first appearance, with the baseline first."""
    impls = list(dict.fromkeys(impl for row in rows for impl in row.candidates))
    if baseline is not None:
        if baseline not in impls:
            raise ReportError(f"unknown baseline impl '{baseline}' "
                              f"(known: {', '.join(impls)})")
        impls.remove(baseline)
        impls.insert(0, baseline)
    return impls


# --------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------


def fmt_number(value: float) -> str:
    """312.4 for large values, three significant digits for small ones (3.50)."""
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:#.3g}"


def speed_ratio(row: Row, impl: str, baseline: str) -> str:
    """impl vs baseline as 'N.NN×', >1 meaning impl is better (faster)."""
    if impl not in row.results or baseline not in row.results:
        return MISSING
    value, base = row.results[impl][0], row.results[baseline][0]
    numerator, denominator = (value, base) if row.metric.higher_is_better else (base, value)
    return f"{numerator / denominator:.2f}×" if denominator else MISSING


def context_line(context: dict) -> str:
    """One markdown line describing the machine and run."""
    fields = [("host", context.get("host_name")),
              ("CPUs", context.get("num_cpus")),
              ("MHz/CPU", context.get("mhz_per_cpu")),
              ("date", context.get("date")),
              ("kern", context.get("kern"))]
    text = " · ".join(f"{label} `{value}`" for label, value in fields if value is not None)
    return f"**Context:** {text or 'not recorded'}"


def markdown_table(rows: list[Row], impls: list[str], baseline: str | None) -> list[str]:
    """The results table as markdown lines."""
    peak_impls = [i for i in impls
                  if any(r.results.get(i, (0, None))[1] is not None for r in rows)]
    # Ratio columns only for impls that share at least one row with the baseline.
    ratio_impls = [i for i in impls if baseline and i != baseline
                   and any(i in r.results and baseline in r.results for r in rows)]
    header = (["family", "dtype", "shape", "threads", "unit"] + impls
              + [f"{i} %peak" for i in peak_impls]
              + [f"{i} vs {baseline}" for i in ratio_impls])
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join([":---"] * 4 + [":---"] + ["---:"] * (len(header) - 5)) + "|"]
    for row in rows:
        cells = [row.family, row.dtype, row.shape, str(row.threads),
                 row.metric.unit if row.metric else MISSING]
        cells += [fmt_number(row.results[i][0]) if i in row.results else MISSING
                  for i in impls]
        cells += [f"{row.results[i][1] * 100:.0f}%"
                  if row.results.get(i, (0, None))[1] is not None else MISSING
                  for i in peak_impls]
        cells += [speed_ratio(row, i, baseline) for i in ratio_impls]
        lines.append("| " + " | ".join(c.replace("|", r"\|") for c in cells) + " |")
    return lines


def markdown_report(documents: list[dict], rows: list[Row], impls: list[str],
                    baseline: str | None) -> str:
    """Context line(s), table and, with a baseline, a note on ratios."""
    contexts = dict.fromkeys(context_line(doc.get("context", {})) for doc in documents)
    lines = [line for context in contexts for line in (context, "")]
    lines += markdown_table(rows, impls, baseline)
    if baseline and len(impls) > 1:
        lines += ["", f"Ratios > 1× mean faster than `{baseline}` "
                      "(for time rows the ratio is baseline time / impl time)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------


def plot_groups(rows: list[Row]) -> dict[tuple, list[Row]]:
    """Rows with a metric, grouped by (family, dtype, metric) in table order."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        if row.metric is not None:
            groups.setdefault((row.family, row.dtype, row.metric), []).append(row)
    return groups


def draw_group(ax, rows: list[Row], impls: list[str]) -> None:
    """One grouped bar chart: x = shape (and threads), one bar per impl."""
    several_threads = len({row.threads for row in rows}) > 1
    labels = [row.shape + (f" t={row.threads}" if several_threads else "") for row in rows]
    present = [i for i in impls if any(i in row.results for row in rows)]
    width = min(0.8 / len(present), 0.35)  # thin bars when an x slot is sparse
    for n, impl in enumerate(present):
        xs = [x + width * (n - (len(present) - 1) / 2) for x in range(len(rows))]
        heights = [row.results[impl][0] if impl in row.results else float("nan")
                   for row in rows]
        # A fixed colour per impl keeps subplots comparable.
        ax.bar(xs, heights, width, label=impl, color=f"C{impls.index(impl) % 10}")
    ax.set_xticks(range(len(rows)), labels, rotation=35, ha="right")
    metric = rows[0].metric
    ax.set_ylabel(metric.unit + ("" if metric.higher_is_better else " (lower is better)"))
    ax.grid(axis="y", linestyle=":", alpha=0.6)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")


def write_plot(rows: list[Row], impls: list[str], title: str, path: str) -> None:
    """Write the grouped bar charts, one subplot per (family, dtype, metric)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ReportError(f"matplotlib is needed for --out-png ({err}); "
                          "run with /usr/bin/python3") from err
    groups = plot_groups(rows)
    if not groups:
        raise ReportError("nothing to plot: no benchmark reports a usable metric")
    # Width grows with the bars of the busiest subplot; capped to keep the PNG sane.
    most_bars = max(len(group) * len({i for row in group for i in row.results})
                    for group in groups.values())
    width = min(30.0, max(8.0, 3.0 + 0.3 * most_bars))
    height = 3.6 * len(groups) + 0.6
    fig, axes = plt.subplots(len(groups), 1, figsize=(width, height), squeeze=False)
    for ax, ((family, dtype, metric), group) in zip(axes[:, 0], groups.items()):
        draw_group(ax, group, impls)
        ax.set_title(f"{family} · {dtype} · {metric.unit}")
    # Lay the subplots out below a fixed 0.5 inch band, then put the title there
    # (set after tight_layout, which handles suptitle unreliably).
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / height))
    fig.suptitle(title, fontsize="x-large", y=1 - 0.1 / height, va="top")
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Summarise Google Benchmark JSON output as a markdown "
                    "table and a PNG bar chart.")
    parser.add_argument("json", nargs="+", metavar="JSON",
                        help="Google Benchmark --benchmark_format=json output file(s)")
    parser.add_argument("--baseline", metavar="IMPL",
                        help="impl to compare the others against (adds ratio columns)")
    parser.add_argument("--out-md", metavar="FILE",
                        help="also write the markdown table to FILE")
    parser.add_argument("--out-png", metavar="FILE", help="write the bar chart to FILE")
    parser.add_argument("--title", metavar="TEXT",
                        help="plot title (default: the benchmark families)")
    parser.add_argument("--filter", metavar="REGEX",
                        help="keep benchmarks whose name matches REGEX (re.search)")
    return parser.parse_args(argv)


def compile_filter(regex: str | None) -> re.Pattern | None:
    try:
        return re.compile(regex) if regex else None
    except re.error as err:
        raise ReportError(f"invalid --filter regex '{regex}': {err}") from err


def run(args: argparse.Namespace) -> None:
    documents = load_files(args.json)
    rows = sorted(collect_rows(documents, compile_filter(args.filter)), key=row_sort_key)
    if not rows:
        raise ReportError("no benchmarks" + (f" match --filter '{args.filter}'"
                                              if args.filter else " in the input"))
    impls = impl_order(rows, args.baseline)

    report = markdown_report(documents, rows, impls, args.baseline)
    print(report, end="")
    if args.out_md:
        Path(args.out_md).write_text(report, encoding="utf-8")

    if args.out_png:
        families = ", ".join(dict.fromkeys(row.family for row in rows))
        write_plot(rows, impls, args.title or families, args.out_png)
        print(f"bench_report: wrote {args.out_png}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ReportError, OSError) as err:
        print(f"bench_report: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
