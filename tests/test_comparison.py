"""Paired differences with bootstrap intervals and the noise floor (nnunet_unpaired/benchmark/comparison.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnunet_unpaired.benchmark import comparison


def rows_for(method: str, scores: dict, modality: str = "CT", structures: int = 1) -> list[dict]:
    """Rows of ``method``: scores[(seed, case)] = Dice of every structure of that case."""
    rows = []
    for (seed, case), dice in scores.items():
        for s in range(structures):
            rows.append({"method": method, "modality": modality, "fold": "0", "seed": seed, "case": case,
                         "structure": f"s{s}", "dice": dice})
    return rows


def test_case_scores_average_structures_and_skip_nan():
    rows = [{"method": "m", "modality": "CT", "fold": "0", "seed": 0, "case": "c1", "structure": "a", "dice": 0.5},
            {"method": "m", "modality": "CT", "fold": "0", "seed": 0, "case": "c1", "structure": "b", "dice": 1.0},
            {"method": "m", "modality": "CT", "fold": "0", "seed": 0, "case": "c1", "structure": "c",
             "dice": math.nan},
            {"method": "m", "modality": "MR", "fold": "0", "seed": 0, "case": "c1", "structure": "a", "dice": 0.0}]
    assert comparison.case_scores(rows, "m", "CT") == {(("0", "0"), "c1"): 0.75}


def test_hand_computed_interval_contains_zero_and_says_so():
    """One run, differences (0, 0, 0, 1): the bootstrap mean of 4 draws is k/4 with k ~ Binomial(4, 1/4):
    P(k=0) = 0.316, P(k<=2) = 0.949, P(k<=3) = 0.996, so the 2.5 % and 97.5 % percentiles are 0 and 0.75."""
    base = {(0, f"c{i}"): 0.5 for i in range(4)}
    method = {(0, "c0"): 0.5, (0, "c1"): 0.5, (0, "c2"): 0.5, (0, "c3"): 1.5}
    rows = rows_for("vanilla", base) + rows_for("m", method)
    d = comparison.paired_difference(rows, "m", "vanilla", "CT")
    assert d.mean == pytest.approx(0.25)
    assert (d.low, d.high) == (pytest.approx(0.0), pytest.approx(0.75))
    assert (d.n_runs, d.n_cases) == (1, 4)
    assert not d.detectable and d.verdict == "no detectable difference"
    assert "no detectable difference" in d.cell()


def test_a_constant_gain_is_detected_and_a_constant_loss_too():
    base = {(s, f"c{i}"): 0.6 + 0.01 * i for s in (0, 1, 2) for i in range(5)}
    better = {k: v + 0.05 for k, v in base.items()}
    worse = {k: v - 0.05 for k, v in base.items()}
    rows = rows_for("vanilla", base) + rows_for("better", better) + rows_for("worse", worse)
    up = comparison.paired_difference(rows, "better", "vanilla", "CT")
    down = comparison.paired_difference(rows, "worse", "vanilla", "CT")
    assert (up.low, up.mean, up.high) == pytest.approx((0.05, 0.05, 0.05))
    assert up.detectable and up.verdict == "better" and (up.n_runs, up.n_cases) == (3, 5)
    assert down.verdict == "worse"


def test_seed_to_seed_variation_widens_the_interval():
    """The two-way bootstrap resamples runs too: two runs that disagree give a wider interval than the same cases
    averaged over the runs first (cases only)."""
    table = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, 0.7]])
    low2, high2 = comparison.bootstrap_interval(table)
    low1, high1 = comparison.bootstrap_interval(table.mean(axis=0, keepdims=True))
    assert low2 <= low1 and high2 >= high1 and (high2 - low2) > (high1 - low1) + 0.05
    assert low2 < table.mean() < high2


def test_pairs_are_matched_on_run_and_case_and_incomplete_ones_dropped():
    base = {(0, "c0"): 0.5, (0, "c1"): 0.5, (1, "c0"): 0.5, (1, "c1"): 0.5, (0, "c2"): 0.0}
    method = {(0, "c0"): 0.6, (0, "c1"): 0.6, (1, "c0"): 0.6, (1, "c1"): 0.6, (1, "c2"): 1.0}
    table, runs, cases = comparison.difference_table(rows_for("vanilla", base) + rows_for("m", method),
                                                     "m", "vanilla", "CT")
    assert cases == ["c0", "c1"] and len(runs) == 2  # c2 is in neither run on both sides
    assert np.allclose(table, 0.1)


def test_noise_floor_is_the_spread_of_the_per_seed_means():
    base = {(0, "a"): 0.5, (0, "b"): 0.7, (1, "a"): 0.4, (1, "b"): 0.6, (2, "a"): 0.8, (2, "b"): 0.8}
    floor = comparison.noise_floor(rows_for("vanilla", base), "vanilla", "CT")
    means = [0.6, 0.5, 0.8]
    assert floor.n_runs == 3
    assert floor.std == pytest.approx(np.std(means, ddof=1)) and floor.spread == pytest.approx(0.3)
    single = comparison.noise_floor(rows_for("vanilla", {(0, "a"): 0.5}), "vanilla", "CT")
    assert math.isnan(single.std) and "n/a" in single.text()


def test_markdown_has_both_baselines_and_the_noise_floor():
    base = {(s, f"c{i}"): 0.5 + 0.02 * i + 0.01 * s for s in (0, 1) for i in range(4)}
    joint = {k: v + 0.1 for k, v in base.items()}
    noisy = {k: v + (0.2 if i % 2 else -0.2) for i, (k, v) in enumerate(base.items())}
    rows = rows_for("vanilla", base) + rows_for("joint", joint) + rows_for("eam", noisy)
    text = "\n".join(comparison.comparison_markdown(rows, ["vanilla", "joint", "eam"], ["vanilla", "joint"]))
    assert "Δ vs vanilla [95% interval]" in text and "Δ vs joint [95% interval]" in text
    joint_line = next(line for line in text.splitlines() if line.startswith("| joint "))
    assert "+0.100 [+0.100, +0.100] (better)" in joint_line
    eam_line = next(line for line in text.splitlines() if line.startswith("| eam "))
    assert "-0.000 [-0.200, +0.200] (no detectable difference)" in eam_line
    assert "noise floor of vanilla on CT: seed-to-seed std 0.007" in text


def test_summary_compares_with_channel_dropout_vanilla_where_it_ran():
    """Issue 17's target for MAML is a paired difference to vanilla-dropout as well as to (zero-filled) vanilla."""
    from nnunet_unpaired.benchmark.summary import COMPARISON_BASELINES

    base = {(s, f"c{i}"): 0.6 + 0.01 * i for s in (0, 1) for i in range(4)}
    rows = (rows_for("vanilla", base) + rows_for("vanilla-dropout", {k: v + 0.3 for k, v in base.items()})
            + rows_for("maml", {k: v + 0.2 for k, v in base.items()}))
    text = "\n".join(comparison.comparison_markdown(rows, ["vanilla", "maml", "vanilla-dropout"],
                                                    COMPARISON_BASELINES))
    assert "Δ vs vanilla [95% interval] | Δ vs vanilla-dropout [95% interval]" in text
    maml_line = next(line for line in text.splitlines() if line.startswith("| maml "))
    assert "+0.200 [+0.200, +0.200] (better)" in maml_line and "-0.100 [-0.100, -0.100] (worse)" in maml_line
