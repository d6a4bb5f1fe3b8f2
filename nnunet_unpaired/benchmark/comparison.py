"""Paired comparisons with intervals: does a method beat a baseline by more than the noise?

The unit of comparison is a test CASE of a RUN, a run being one (seed, fold) training of every method (the harness
trains every method with the same seeds, folds and splits, so runs pair up). A case's score is its Dice averaged over
the structures (structures whose Dice is NaN, absent from both reference and prediction, are left out).

- :func:`paired_difference`: the mean over runs and cases of ``score(method) - score(baseline)``, matched on (run,
  case), with a 95 % percentile bootstrap interval from :func:`scipy.stats.bootstrap` that resamples runs and cases
  independently (a two-way bootstrap: seed-to-seed and case-to-case variation both widen it). With one run only the
  cases are resampled, and the interval says nothing about seed-to-seed noise. Runs or cases missing on either side
  are dropped (only the complete run x case table is used). With few runs the bootstrap is optimistic: resampling 3
  seeds underestimates their spread (the plug-in variance has a factor (n-1)/n); read the noise floor beside it.
- An interval that contains zero is reported as **no detectable difference**, never as a win or a loss.
- :func:`noise_floor`: the seed-to-seed spread of a method's (vanilla's) mean Dice: the standard deviation and the
  range of its per-run mean scores. A difference smaller than it is not one to build on, whatever the interval says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Row = Mapping[str, object]
CONFIDENCE = 0.95
N_RESAMPLES = 9999
#: the bootstrap's random generator seed: the same rows always give the same interval
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Difference:
    """``method - baseline`` on one modality: mean, interval, what was paired and what it means."""

    method: str
    baseline: str
    modality: str
    mean: float
    low: float
    high: float
    n_runs: int
    n_cases: int

    @property
    def detectable(self) -> bool:
        """True when the interval excludes zero."""
        return math.isfinite(self.low) and (self.low > 0 or self.high < 0)

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.mean):
            return "n/a"
        if not self.detectable:
            return "no detectable difference"
        return "better" if self.mean > 0 else "worse"

    def cell(self, decimals: int = 3) -> str:
        """Markdown cell: ``+0.012 [-0.004, +0.030] (no detectable difference)``."""
        if not math.isfinite(self.mean):
            return "n/a"
        if not math.isfinite(self.low):
            return f"{self.mean:+.{decimals}f} (interval n/a: {self.n_runs} run(s) x {self.n_cases} case(s))"
        return f"{self.mean:+.{decimals}f} [{self.low:+.{decimals}f}, {self.high:+.{decimals}f}] ({self.verdict})"


def _run(row: Row) -> tuple[str, str]:
    return (str(row.get("seed") if row.get("seed") is not None else ""),
            str(row.get("fold") if row.get("fold") is not None else ""))


def case_scores(rows: Sequence[Row], method: str, modality: str) -> dict[tuple[tuple[str, str], str], float]:
    """(run, case) -> the case's Dice averaged over its structures (NaN structures left out)."""
    values: dict[tuple[tuple[str, str], str], list[float]] = {}
    for r in rows:
        if r.get("method") != method or r.get("modality") != modality:
            continue
        dice = r.get("dice")
        if dice is None or not math.isfinite(float(dice)):
            continue
        values.setdefault((_run(r), str(r["case"])), []).append(float(dice))
    return {key: float(np.mean(v)) for key, v in values.items() if v}


def difference_table(rows: Sequence[Row], method: str, baseline: str, modality: str
                     ) -> tuple[np.ndarray, list[tuple[str, str]], list[str]]:
    """The complete runs x cases table of ``score(method) - score(baseline)`` (runs and cases present on both
    sides in every cell), with its run and case labels."""
    mine, theirs = case_scores(rows, method, modality), case_scores(rows, baseline, modality)
    common = set(mine) & set(theirs)
    runs = sorted({run for run, _ in common})
    cases = sorted({case for _, case in common})
    # keep the cases present in every run (a case missing in one run would unbalance the two-way bootstrap)
    cases = [c for c in cases if all((run, c) in common for run in runs)]
    table = np.array([[mine[(run, c)] - theirs[(run, c)] for c in cases] for run in runs], dtype=float)
    return table.reshape(len(runs), len(cases)), runs, cases


def bootstrap_interval(table: np.ndarray, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a runs x cases table, resampling runs and cases independently
    (cases only when there is one run). NaN when there are fewer than 2 cases."""
    from scipy.stats import bootstrap

    n_runs, n_cases = table.shape
    if n_cases < 2:
        return math.nan, math.nan
    if np.allclose(table, table.flat[0]):
        return float(table.flat[0]), float(table.flat[0])  # no spread: every resample has the same mean
    case_index = np.arange(n_cases)
    if n_runs < 2:
        data = (case_index,)

        def statistic(cases):
            return table[0, cases].mean()
    else:
        data = (np.arange(n_runs), case_index)

        def statistic(runs, cases):
            return table[np.ix_(runs, cases)].mean()

    result = bootstrap(data, statistic, n_resamples=n_resamples, vectorized=False, paired=False,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(rows: Sequence[Row], method: str, baseline: str, modality: str,
                      confidence: float = CONFIDENCE) -> Difference:
    """``method - baseline`` on ``modality``: mean over the paired (run, case) table and its bootstrap interval."""
    table, runs, cases = difference_table(rows, method, baseline, modality)
    if table.size == 0:
        return Difference(method, baseline, modality, math.nan, math.nan, math.nan, 0, 0)
    low, high = bootstrap_interval(table, confidence)
    return Difference(method, baseline, modality, float(table.mean()), low, high, len(runs), len(cases))


def run_means(rows: Sequence[Row], method: str, modality: str) -> dict[tuple[str, str], float]:
    """run -> the method's mean case score in that run."""
    per_run: dict[tuple[str, str], list[float]] = {}
    for (run, _), score in case_scores(rows, method, modality).items():
        per_run.setdefault(run, []).append(score)
    return {run: float(np.mean(v)) for run, v in sorted(per_run.items())}


def mean_over_runs(rows: Sequence[Row], method: str, modality: str) -> float:
    means = list(run_means(rows, method, modality).values())
    return float(np.mean(means)) if means else math.nan


@dataclass(frozen=True)
class NoiseFloor:
    method: str
    modality: str
    n_runs: int
    std: float  # sample standard deviation (ddof 1) of the per-run mean scores; NaN below 2 runs
    spread: float  # max - min of the per-run mean scores

    def text(self) -> str:
        if self.n_runs < 2:
            return f"noise floor of {self.method} on {self.modality}: n/a ({self.n_runs} run; needs 2 or more seeds)"
        return (f"noise floor of {self.method} on {self.modality}: seed-to-seed std {self.std:.3f}, range "
                f"{self.spread:.3f} of its mean Dice over {self.n_runs} runs")


def noise_floor(rows: Sequence[Row], method: str, modality: str) -> NoiseFloor:
    means = list(run_means(rows, method, modality).values())
    std = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
    spread = float(max(means) - min(means)) if means else math.nan
    return NoiseFloor(method, modality, len(means), std, spread)


def comparison_markdown(rows: Sequence[Row], methods: Sequence[str], baselines: Sequence[str]) -> list[str]:
    """Markdown lines: per modality and method, the mean Dice over runs and the paired difference to each baseline
    present, with its interval and verdict; the noise floor of the first baseline under each modality's table."""
    modalities = list(dict.fromkeys(str(r["modality"]) for r in rows))
    present = set(str(r["method"]) for r in rows)
    bases = [b for b in baselines if b in present]
    lines = []
    for modality in modalities:
        header = ["method", "mean Dice (over runs)", "runs x cases"] + [f"Δ vs {b} [95% interval]" for b in bases]
        lines += [f"**{modality}**", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for method in methods:
            if method not in present:
                continue
            cells = [method, f"{mean_over_runs(rows, method, modality):.3f}"]
            diffs = [paired_difference(rows, method, b, modality) for b in bases]
            shape = next((f"{d.n_runs} x {d.n_cases}" for d in diffs if d.n_runs), "")
            if not shape:
                scores = case_scores(rows, method, modality)
                shape = f"{len({run for run, _ in scores})} x {len({c for _, c in scores})}"
            cells.append(shape)
            cells += ["—" if d.method == d.baseline else d.cell() for d in diffs]
            lines.append("| " + " | ".join(cells) + " |")
        if bases:
            lines += ["", noise_floor(rows, bases[0], modality).text() + "."]
        lines.append("")
    return lines
