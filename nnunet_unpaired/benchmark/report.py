"""Benchmark report: CSV of every number, markdown tables with paired tests against vanilla, PNG plots.

Input rows are dicts, one per method, modality, run, case and structure, with at least ``method``, ``modality``,
``case``, ``structure``, ``dice``, ``hd95``, ``assd`` (the rows of :func:`nnunet_unpaired.benchmark.metrics.
evaluate_folder` plus ``method`` and ``modality``). A run is identified by the optional keys ``fold`` and ``seed``
(either, both or neither); rows of the same case in different runs are different samples.

Statistics:

- Aggregates are mean ± sample standard deviation (ddof = 1) over every case and run. NaN values (see the empty-set
  conventions in :mod:`nnunet_unpaired.benchmark.metrics`) are left out, and the markdown cell then says how many
  values were used (``n=used/total``). A single value is shown without a spread.
- The spread across runs (when a method has several folds or seeds) is the mean ± std of the per-run means.
- Paired tests: for each modality, structure and method other than the baseline (``vanilla``), the values are paired
  with the baseline's over matched (case, fold, seed); pairs with a NaN on either side are dropped. The Wilcoxon
  signed-rank test (scipy, two-sided) gives the p-value, reported with the mean difference (method - baseline) and
  the number of pairs. Fewer than 2 pairs, or all differences zero, give 'n/a'. p-values are not corrected for
  multiple comparisons.

Costs: optional rows with ``method`` and any of ``seconds_per_iteration`` (training), ``peak_memory_mib`` (peak GPU
memory in MiB) and ``inference_seconds_per_case``; several rows of a method are averaged; each value is also shown as
a ratio to the baseline's.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``). Plots use matplotlib's
Agg canvas directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import wilcoxon

Row = Mapping[str, object]

BASELINE = "vanilla"
RUN_KEYS = ("fold", "seed")
METRICS = ("dice", "hd95", "assd")
REQUIRED_KEYS = ("method", "modality", "case", "structure", *METRICS)
COST_KEYS = ("seconds_per_iteration", "peak_memory_mib", "inference_seconds_per_case")
CSV_COLUMNS = ("method", "modality", "fold", "seed", "case", "structure", "label", *METRICS, "ref_voxels",
               "pred_voxels")
_TEXT_COLUMNS = ("method", "modality", "case", "structure")

_METRIC_TITLES = {"dice": "Dice", "hd95": "HD95 (mm)", "assd": "ASSD (mm)"}
_METRIC_DECIMALS = {"dice": 3, "hd95": 2, "assd": 2}
_COST_TITLES = {"seconds_per_iteration": "s / training iteration", "peak_memory_mib": "peak memory (MiB)",
                "inference_seconds_per_case": "inference s / case"}


# ----------------------------------------------------------------------------------------------------------- CSV


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    """Write every row to a CSV file: the known columns first (see ``CSV_COLUMNS``), then any other key.

    Args:
        rows: result rows (or cost rows); keys may differ between rows (missing values are written empty).
        path: the CSV file to write.

    Returns:
        The path written.

    Raises:
        ValueError: if ``rows`` is empty.
    """
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    columns = _csv_columns(rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(row.get(key)) for key in columns})
    return _write_text(Path(path), buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, object]]:
    """Read a CSV written by :func:`write_csv` back into rows.

    ``method``, ``modality``, ``case`` and ``structure`` stay text; other values become int or float when they
    parse as such (``nan`` is a float NaN), else stay text (a region label ``[1, 2]``); empty cells become None.

    Args:
        path: the CSV file.

    Returns:
        The rows, in file order.
    """
    with open(path, newline="") as handle:
        return [{key: _parse_cell(key, value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _csv_columns(rows: Sequence[Row]) -> list[str]:
    present: dict[str, None] = {}
    for row in rows:
        present.update(dict.fromkeys(row))
    known = [c for c in CSV_COLUMNS if c in present]
    return known + [c for c in present if c not in CSV_COLUMNS]


def _csv_value(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest text that reads back to the same float
    if isinstance(value, np.integer):
        return int(value)
    return value


def _parse_cell(key: str, text: str) -> object:
    if text == "":
        return None
    if key in _TEXT_COLUMNS:
        return text
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


# ---------------------------------------------------------------------------------------------------- statistics


def summarize(rows: Sequence[Row], metric: str) -> list[dict[str, object]]:
    """Mean ± std of one metric per modality, structure and method, over all cases and runs, NaN left out.

    Args:
        rows: result rows (see the module docstring).
        metric: one of ``METRICS``.

    Returns:
        One dict per group: ``modality``, ``structure``, ``method``, ``mean``, ``std`` (ddof = 1; NaN for fewer than
        two values), ``n`` (values used), ``n_total`` (values including NaN). Groups in order of first appearance.

    Raises:
        ValueError: if a row lacks a required key or ``metric`` is unknown.
    """
    _check_rows(rows)
    _check_metric(metric)
    groups = _group(rows, ("modality", "structure", "method"))
    return [{"modality": mod, "structure": struct, "method": method, **_mean_std([r[metric] for r in members])}
            for (mod, struct, method), members in groups.items()]


def run_spread(rows: Sequence[Row], metric: str = "dice") -> list[dict[str, object]]:
    """Spread across runs: mean ± std of the per-run means (run = fold and seed) per modality, structure, method.

    Args:
        rows: result rows.
        metric: one of ``METRICS``.

    Returns:
        One dict per group: ``modality``, ``structure``, ``method``, ``mean``, ``std``, ``n`` (runs with a mean),
        ``n_total`` (runs).

    Raises:
        ValueError: if a row lacks a required key or ``metric`` is unknown.
    """
    _check_rows(rows)
    _check_metric(metric)
    result = []
    for (mod, struct, method), members in _group(rows, ("modality", "structure", "method")).items():
        run_means = [_mean_std([r[metric] for r in run])["mean"] for run in _group(members, RUN_KEYS).values()]
        result.append({"modality": mod, "structure": struct, "method": method, **_mean_std(run_means)})
    return result


def paired_tests(rows: Sequence[Row], metric: str = "dice", baseline: str = BASELINE) -> list[dict[str, object]]:
    """Wilcoxon signed-rank test of each method against the baseline, per modality and structure.

    Args:
        rows: result rows.
        metric: one of ``METRICS``.
        baseline: the method every other method is compared with.

    Returns:
        One dict per modality, structure and non-baseline method: ``modality``, ``structure``, ``method``,
        ``n_pairs``, ``mean_difference`` (method - baseline; NaN without pairs) and ``p_value`` (None when fewer than
        2 pairs or all differences are zero). Empty when the baseline has no rows.

    Raises:
        ValueError: if a row lacks a required key, ``metric`` is unknown, or a method has two rows for the same
            modality, structure, case and run.
    """
    _check_rows(rows)
    _check_metric(metric)
    _check_unique(rows)
    methods = _methods(rows, baseline)
    if baseline not in methods:
        return []
    results = []
    for (mod, struct), members in _group(rows, ("modality", "structure")).items():
        by_method = _group(members, ("method",))
        reference = _values_by_sample(by_method.get((baseline,), []), metric)
        for method in methods[1:]:
            values = _values_by_sample(by_method.get((method,), []), metric)
            diffs = [values[k] - reference[k] for k in values if k in reference]
            results.append({"modality": mod, "structure": struct, "method": method, **_wilcoxon(diffs)})
    return results


def cost_summary(cost_rows: Sequence[Row], baseline: str = BASELINE) -> list[dict[str, object]]:
    """Costs per method (rows of a method averaged), each with its ratio to the baseline's.

    Args:
        cost_rows: dicts with ``method`` and any of ``COST_KEYS``.
        baseline: the method the ratios refer to.

    Returns:
        One dict per method (baseline first): ``method``, then for each cost key its mean (NaN when absent) and
        ``<key>_ratio`` (NaN without a baseline value).

    Raises:
        ValueError: if a cost row has no ``method``.
    """
    for index, row in enumerate(cost_rows):
        if "method" not in row:
            raise ValueError(f"cost row {index} has no 'method': {dict(row)}")
    groups = _group(cost_rows, ("method",))
    means = {method: {key: _nanmean([r.get(key) for r in members]) for key in COST_KEYS}
             for (method,), members in groups.items()}
    base = means.get(baseline, dict.fromkeys(COST_KEYS, math.nan))
    result = []
    for method in sorted(means, key=lambda m: m != baseline):
        row: dict[str, object] = {"method": method}
        for key in COST_KEYS:
            row[key] = means[method][key]
            usable = math.isfinite(base[key]) and base[key] != 0
            row[f"{key}_ratio"] = means[method][key] / base[key] if usable else math.nan
        result.append(row)
    return result


def _check_rows(rows: Sequence[Row]) -> None:
    if not rows:
        raise ValueError("no result rows")
    for index, row in enumerate(rows):
        missing = [key for key in REQUIRED_KEYS if key not in row]
        if missing:
            raise ValueError(f"result row {index} lacks {missing}; every row needs {list(REQUIRED_KEYS)}: {dict(row)}")


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


def _check_unique(rows: Sequence[Row]) -> None:
    seen = set()
    for row in rows:
        key = (_key(row, ("method", "modality", "structure", "case")), _run(row))
        if key in seen:
            raise ValueError(f"two rows for method, modality, structure, case and run {key}; give each run a "
                             f"distinct 'fold' or 'seed'")
        seen.add(key)


def _key(row: Row, keys: Iterable[str]) -> tuple[str, ...]:
    return tuple("" if row.get(k) is None else str(row.get(k)) for k in keys)


def _run(row: Row) -> tuple[str, ...]:
    return _key(row, RUN_KEYS)


def _group(rows: Iterable[Row], keys: Sequence[str]) -> dict[tuple[str, ...], list[Row]]:
    groups: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        groups.setdefault(_key(row, keys), []).append(row)
    return groups


def _methods(rows: Sequence[Row], baseline: str) -> list[str]:
    """Methods in order of first appearance, the baseline first."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    return sorted(methods, key=lambda m: m != baseline)


def _ordered(rows: Sequence[Row], key: str) -> list[str]:
    return list(dict.fromkeys(str(r[key]) for r in rows))


def _values_by_sample(rows: Sequence[Row], metric: str) -> dict[tuple[str, ...], float]:
    """Finite values keyed by (case, fold, seed)."""
    values = {}
    for row in rows:
        value = _as_float(row[metric])
        if math.isfinite(value):
            values[(str(row["case"]), *_run(row))] = value
    return values


def _as_float(value: object) -> float:
    return math.nan if value is None else float(value)


def _nanmean(values: Sequence[object]) -> float:
    return _mean_std(values)["mean"]


def _mean_std(values: Sequence[object]) -> dict[str, float | int]:
    arr = np.array([_as_float(v) for v in values], dtype=float)
    finite = arr[np.isfinite(arr)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    return {"mean": mean, "std": std, "n": int(finite.size), "n_total": int(arr.size)}


def _wilcoxon(diffs: Sequence[float]) -> dict[str, object]:
    mean_difference = float(np.mean(diffs)) if diffs else math.nan
    p_value = None
    if len(diffs) >= 2 and any(d != 0 for d in diffs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns when it falls back to the normal approximation
            p_value = float(wilcoxon(diffs).pvalue)
        if not math.isfinite(p_value):
            p_value = None
    return {"n_pairs": len(diffs), "mean_difference": mean_difference, "p_value": p_value}


# ------------------------------------------------------------------------------------------------------ markdown


def markdown_report(rows: Sequence[Row], cost_rows: Sequence[Row] | None = None, baseline: str = BASELINE) -> str:
    """The markdown text of the report (see the module docstring for the statistics).

    Args:
        rows: result rows.
        cost_rows: optional cost rows (see :func:`cost_summary`).
        baseline: the method the paired tests and cost ratios refer to.

    Returns:
        Markdown: per modality, a structure x method table of mean ± std for Dice, HD95 and ASSD, the spread across
        runs when a method has several, the paired tests; then the cost table when ``cost_rows`` are given.

    Raises:
        ValueError: as :func:`paired_tests`.
    """
    _check_rows(rows)
    _check_unique(rows)
    intro = ("Mean ± sample standard deviation over all cases and runs (folds / seeds). NaN values (empty prediction "
             "or reference; no distance to an empty set) are left out; `n=used/total` marks a cell where some were.")
    lines = ["# Benchmark results", "", intro, ""]
    methods = _methods(rows, baseline)
    for modality in _ordered(rows, "modality"):
        subset = [r for r in rows if str(r["modality"]) == modality]
        lines += [f"## {modality}", ""]
        for metric in METRICS:
            lines += _summary_table(_METRIC_TITLES[metric], summarize(subset, metric), methods, metric)
        if any(len(_group(members, RUN_KEYS)) > 1 for members in _group(subset, ("method",)).values()):
            lines += _summary_table("Spread across runs: mean ± std of the per-run mean Dice",
                                    run_spread(subset, "dice"), methods, "dice")
        lines += _tests_section(subset, methods, baseline)
    if cost_rows:
        lines += _cost_table(cost_summary(cost_rows, baseline), baseline)
    return "\n".join(lines)


def write_markdown(rows: Sequence[Row], path: str | Path, cost_rows: Sequence[Row] | None = None,
                   baseline: str = BASELINE) -> Path:
    """Write :func:`markdown_report` to ``path``.

    Args:
        rows: result rows.
        path: the markdown file to write.
        cost_rows: optional cost rows.
        baseline: the method the paired tests and cost ratios refer to.

    Returns:
        The path written.

    Raises:
        ValueError: as :func:`markdown_report`.
    """
    return _write_text(Path(path), markdown_report(rows, cost_rows, baseline))


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body] + [""]


def _summary_table(title: str, summary: Sequence[Row], methods: Sequence[str], metric: str) -> list[str]:
    cells = {(str(s["structure"]), str(s["method"])): _format_cell(s, _METRIC_DECIMALS[metric]) for s in summary}
    structures = list(dict.fromkeys(str(s["structure"]) for s in summary))
    body = [[structure] + [cells.get((structure, m), "") for m in methods] for structure in structures]
    return [f"### {title}", ""] + _table(["structure", *methods], body)


def _format_cell(stats: Row, decimals: int) -> str:
    n, n_total = int(stats["n"]), int(stats["n_total"])
    if n == 0:
        return f"n/a (n=0/{n_total})"
    text = f"{stats['mean']:.{decimals}f}"
    if n > 1:
        text += f" ± {stats['std']:.{decimals}f}"
    return text + (f" (n={n}/{n_total})" if n < n_total else "")


def _tests_section(rows: Sequence[Row], methods: Sequence[str], baseline: str) -> list[str]:
    title = f"### Paired tests against {baseline}"
    if baseline not in methods:
        return [title, "", f"No rows for method '{baseline}': no paired tests.", ""]
    others = [m for m in methods if m != baseline]
    if not others:
        return []
    body = []
    for metric in METRICS:
        cells = {(str(t["structure"]), str(t["method"])): _format_test(t, _METRIC_DECIMALS[metric])
                 for t in paired_tests(rows, metric, baseline)}
        for structure in _ordered(rows, "structure"):
            body.append([structure, _METRIC_TITLES[metric]] + [cells.get((structure, m), "n/a") for m in others])
    intro = (f"Wilcoxon signed-rank test (two-sided) over matched (case, fold, seed) pairs; Δ = method - {baseline} "
             f"(higher Dice, lower HD95 / ASSD is better); n = pairs. Not corrected for multiple comparisons.")
    return [title, "", intro, ""] + _table(["structure", "metric", *others], body)


def _format_test(test: Row, decimals: int) -> str:
    n = int(test["n_pairs"])
    if test["p_value"] is None:
        diff = "" if n == 0 else f"Δ={test['mean_difference']:+.{decimals}f}, "
        return f"{diff}p=n/a, n={n}"
    return f"Δ={test['mean_difference']:+.{decimals}f}, p={test['p_value']:.3g}, n={n}"


def _cost_table(costs: Sequence[Row], baseline: str) -> list[str]:
    header = ["method"]
    for key in COST_KEYS:
        header += [_COST_TITLES[key], f"× {baseline}"]
    body = []
    for row in costs:
        cells = [str(row["method"])]
        for key in COST_KEYS:
            cells += [_format_number(row[key]), _format_ratio(row[f"{key}_ratio"])]
        body.append(cells)
    return ["## Cost", ""] + _table(header, body)


def _format_number(value: object) -> str:
    """Three significant digits, without an exponent for large values (4000, not 4e+03)."""
    number = _as_float(value)
    if not math.isfinite(number):
        return "n/a"
    return f"{number:.0f}" if abs(number) >= 100 else f"{number:.3g}"


def _format_ratio(value: object) -> str:
    number = _as_float(value)
    return f"{number:.2f}" if math.isfinite(number) else "n/a"


# --------------------------------------------------------------------------------------------------------- plots


def dice_bar_figure(rows: Sequence[Row], modality: str, baseline: str = BASELINE) -> Figure:
    """Grouped bars of the mean Dice per structure, one bar per method, the std as error bar.

    Args:
        rows: result rows.
        modality: the modality to plot.
        baseline: drawn first.

    Returns:
        The figure; its axes hold one bar container per method, labelled with the method.

    Raises:
        ValueError: if a row lacks a required key or no row has this modality.
    """
    subset, structures, methods = _modality_subset(rows, modality, baseline)
    stats = {(str(s["structure"]), str(s["method"])): s for s in summarize(subset, "dice")}
    fig, ax = _new_figure(len(structures), len(methods))
    width = 0.8 / len(methods)
    x = np.arange(len(structures))
    for i, method in enumerate(methods):
        group = [stats.get((s, method), {"mean": math.nan, "std": math.nan}) for s in structures]
        means = [g["mean"] for g in group]
        stds = [0.0 if not math.isfinite(g["std"]) else g["std"] for g in group]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=method)
    _finish_axes(ax, structures, f"Mean Dice per structure ({modality})")
    return fig


def dice_boxplot_figure(rows: Sequence[Row], modality: str, baseline: str = BASELINE) -> Figure:
    """Box plot of the per-case Dice (every case and run) per structure and method; NaN left out.

    Args:
        rows: result rows.
        modality: the modality to plot.
        baseline: drawn first.

    Returns:
        The figure; each median line has the gid ``median:<structure>:<method>``.

    Raises:
        ValueError: if a row lacks a required key or no row has this modality.
    """
    subset, structures, methods = _modality_subset(rows, modality, baseline)
    fig, ax = _new_figure(len(structures), len(methods))
    width = 0.8 / len(methods)
    colors = [f"C{i}" for i in range(len(methods))]
    for i, method in enumerate(methods):
        for j, structure in enumerate(structures):
            values = [_as_float(r["dice"]) for r in subset if r["method"] == method and r["structure"] == structure]
            values = [v for v in values if math.isfinite(v)]
            if not values:
                continue
            parts = ax.boxplot([values], positions=[j + (i - (len(methods) - 1) / 2) * width], widths=width * 0.9,
                               patch_artist=True, boxprops={"facecolor": colors[i], "alpha": 0.6},
                               medianprops={"color": "black"}, manage_ticks=False)
            parts["medians"][0].set_gid(f"median:{structure}:{method}")
        ax.plot([], [], color=colors[i], linewidth=6, alpha=0.6, label=method)  # legend entry
    _finish_axes(ax, structures, f"Dice per case ({modality})")
    return fig


def training_loss_figure(train_losses: Mapping[str, Sequence[float]],
                         val_losses: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Loss per epoch for each method: training solid, validation dashed in the same colour.

    Args:
        train_losses: method -> training loss per epoch (epoch 0 first).
        val_losses: optional method -> validation loss per epoch.

    Returns:
        The figure; each line is labelled ``<method> train`` or ``<method> val``.

    Raises:
        ValueError: if ``train_losses`` is empty.
    """
    if not train_losses:
        raise ValueError("no training losses to plot")
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (method, losses) in enumerate(train_losses.items()):
        ax.plot(np.arange(len(losses)), losses, color=f"C{i}", label=f"{method} train")
        if val_losses and method in val_losses:
            val = val_losses[method]
            ax.plot(np.arange(len(val)), val, color=f"C{i}", linestyle="--", label=f"{method} val")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save a figure as PNG, atomically.

    Args:
        fig: the figure.
        path: the PNG file to write.

    Returns:
        The path written.
    """
    return _atomic_write(Path(path), "wb", lambda handle: fig.savefig(handle, format="png", dpi=120))


def _modality_subset(rows: Sequence[Row], modality: str, baseline: str) -> tuple[list[Row], list[str], list[str]]:
    _check_rows(rows)
    subset = [r for r in rows if str(r["modality"]) == modality]
    if not subset:
        raise ValueError(f"no rows for modality {modality!r}; modalities: {_ordered(rows, 'modality')}")
    return subset, _ordered(subset, "structure"), _methods(subset, baseline)


def _new_figure(n_structures: int, n_methods: int) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(max(6.0, 0.35 * n_structures * (n_methods + 1) + 2), 4.5))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish_axes(ax: Axes, structures: Sequence[str], title: str) -> None:
    ax.set_xticks(np.arange(len(structures)))
    ax.set_xlim(-0.5, len(structures) - 0.5)
    ax.set_xticklabels(structures, rotation=30 if len(structures) > 4 else 0, ha="right" if len(structures) > 4
                       else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Dice")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.figure.tight_layout()


# -------------------------------------------------------------------------------------------------- whole report


def write_report(rows: Sequence[Row], out_dir: str | Path, cost_rows: Sequence[Row] | None = None,
                 train_losses: Mapping[str, Sequence[float]] | None = None,
                 val_losses: Mapping[str, Sequence[float]] | None = None, baseline: str = BASELINE) -> dict[str, Path]:
    """Write the whole report into ``out_dir`` (created if needed).

    Files: ``results.csv``, ``results.md``, ``costs.csv`` (with cost rows), ``dice_per_structure_<modality>.png`` and
    ``dice_boxplot_<modality>.png`` for each modality, ``training_loss.png`` (with training losses). Characters of a
    modality other than letters, digits, ``-`` and ``_`` become ``_`` in file names.

    Args:
        rows: result rows.
        out_dir: output folder.
        cost_rows: optional cost rows (see :func:`cost_summary`).
        train_losses: optional method -> training loss per epoch.
        val_losses: optional method -> validation loss per epoch.
        baseline: the method the paired tests and cost ratios refer to.

    Returns:
        File name -> path of every file written.

    Raises:
        ValueError: if a row lacks a required key or two rows describe the same sample.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {"results.csv": write_csv(rows, out / "results.csv"),
               "results.md": write_markdown(rows, out / "results.md", cost_rows, baseline)}
    if cost_rows:
        written["costs.csv"] = write_csv(cost_rows, out / "costs.csv")
    for modality in _ordered(rows, "modality"):
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", modality)
        for name, make in ((f"dice_per_structure_{safe}.png", dice_bar_figure),
                           (f"dice_boxplot_{safe}.png", dice_boxplot_figure)):
            written[name] = save_figure(make(rows, modality, baseline), out / name)
    if train_losses:
        written["training_loss.png"] = save_figure(training_loss_figure(train_losses, val_losses),
                                                   out / "training_loss.png")
    return written


# -------------------------------------------------------------------------------------------------- atomic files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_text(path: Path, text: str) -> Path:
    return _atomic_write(path, "w", lambda handle: handle.write(text))


def _atomic_write(path: Path, mode: str, write: Callable[[IO], object]) -> Path:
    """Write through ``write`` into a temporary file beside ``path``, then move it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
