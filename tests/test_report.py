"""Report writers: CSV round trip, markdown numbers from the CSV, paired tests, cost ratios, PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import imread

from nnunet_unpaired.benchmark.report import (
    cost_summary,
    dice_bar_figure,
    dice_boxplot_figure,
    markdown_report,
    paired_tests,
    read_csv,
    run_spread,
    save_figure,
    training_loss_figure,
    write_csv,
    write_report,
)

CASES = ["001", "002", "003", "004", "005"]
FOLDS = [0, 1]
STRUCTURES = ["liver", "spleen"]
GAIN = [0.010, 0.012, 0.014, 0.016, 0.018, 0.020, 0.022, 0.024, 0.026, 0.028]  # eam - vanilla per (fold, case)


def make_rows() -> list[dict[str, object]]:
    """Vanilla with random scores; 'eam' = vanilla + a distinct positive gain on every (fold, case) pair; 'noisy' =
    vanilla + zero-mean noise. Two modalities; the first case's ASSD is NaN (an empty prediction, say)."""
    rng = np.random.default_rng(7)
    rows = []
    for modality in ["CT", "MR"]:
        for structure in STRUCTURES:
            for fold in FOLDS:
                for c, case in enumerate(CASES):
                    base = {"modality": modality, "fold": fold, "case": case, "structure": structure, "label": 1}
                    dice = float(rng.uniform(0.6, 0.9))
                    hd95, assd = float(rng.uniform(2, 9)), math.nan if c == 0 else float(rng.uniform(0.5, 3))
                    gain = GAIN[fold * len(CASES) + c]
                    noise = float(rng.normal(0, 0.02))
                    rows.append({**base, "method": "vanilla", "dice": dice, "hd95": hd95, "assd": assd})
                    rows.append({**base, "method": "eam", "dice": dice + gain, "hd95": hd95 - 1, "assd": assd})
                    rows.append({**base, "method": "noisy", "dice": dice + noise, "hd95": hd95, "assd": assd})
    return rows


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


def md_table(markdown: str, modality: str, title: str) -> list[dict[str, str]]:
    """The rows of the table under '### <title>' in section '## <modality>', each as {column: cell}."""
    section = markdown.split(f"\n## {modality}\n", 1)[1].split("\n## ", 1)[0]
    block = section.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    table = [line for line in block.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def md_cell(markdown: str, modality: str, title: str, column: str, **match: str) -> str:
    """One cell: the ``column`` of the only row whose cells equal ``match`` (e.g. structure="liver")."""
    (row,) = [r for r in md_table(markdown, modality, title) if all(r[k] == v for k, v in match.items())]
    return row[column]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """One report for the whole module (tests only read it): rendering the plots is the slow part."""
    out = tmp_path_factory.mktemp("report")
    written = write_report(make_rows(), out,
                           cost_rows=[{"method": "vanilla", "seconds_per_iteration": 2.0, "peak_memory_mib": 4000},
                                      {"method": "eam", "seconds_per_iteration": 2.5, "peak_memory_mib": 6000},
                                      {"method": "eam", "seconds_per_iteration": 3.5, "peak_memory_mib": 6000,
                                       "inference_seconds_per_case": 40.0}],
                           train_losses={"vanilla": [1.0, 0.6, 0.4], "eam": [1.1, 0.5, 0.3]},
                           val_losses={"vanilla": [1.2, 0.8, 0.7]})
    return out, written


def test_all_files_written_and_no_temporary_left(report_dir):
    out, written = report_dir
    expected = {"results.csv", "results.md", "costs.csv", "training_loss.png"}
    expected |= {f"dice_{kind}_{m}.png" for kind in ("per_structure", "boxplot") for m in ("CT", "MR")}
    assert set(written) == expected
    assert {p.name for p in out.iterdir()} == expected


def test_csv_round_trip(report_dir):
    out, _ = report_dir
    rows = make_rows()
    back = read_csv(out / "results.csv")
    assert len(back) == len(rows)
    for original, read in zip(rows, back):
        assert set(read) == set(original)
        assert all(same(original[k], read[k]) for k in original), (original, read)
    assert back[0]["case"] == "001" and back[0]["fold"] == 0  # text stays text, numbers become numbers
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "method,modality,fold,case,structure,label,dice,hd95,assd"


def test_markdown_holds_the_means_of_the_csv(report_dir):
    out, _ = report_dir
    back = read_csv(out / "results.csv")
    markdown = (out / "results.md").read_text()
    checked = 0
    for modality in ["CT", "MR"]:
        for metric, title, decimals in [("dice", "Dice", 3), ("hd95", "HD95 (mm)", 2), ("assd", "ASSD (mm)", 2)]:
            for structure in STRUCTURES:
                for method in ["vanilla", "eam", "noisy"]:
                    values = np.array([r[metric] for r in back if (r["modality"], r["structure"], r["method"])
                                       == (modality, structure, method)], dtype=float)
                    finite = values[np.isfinite(values)]
                    cell = f"{finite.mean():.{decimals}f} ± {finite.std(ddof=1):.{decimals}f}"
                    if finite.size < values.size:
                        cell += f" (n={finite.size}/{values.size})"
                    assert md_cell(markdown, modality, title, method, structure=structure) == cell
                    checked += 1
    assert checked == 36
    assert "(n=8/10)" in md_cell(markdown, "CT", "ASSD (mm)", "vanilla", structure="liver")


def test_spread_across_runs_hand_computed():
    """Fold 0 Dice 0.8 and 0.9 (mean 0.85), fold 1 Dice 0.6 and 0.7 (mean 0.65): across runs 0.75 ± sqrt(0.02)."""
    rows = [{"method": "vanilla", "modality": "CT", "fold": f, "case": c, "structure": "liver", "dice": d,
             "hd95": 1.0, "assd": 1.0} for f, c, d in [(0, "a", 0.8), (0, "b", 0.9), (1, "a", 0.6), (1, "b", 0.7)]]
    (spread,) = run_spread(rows)
    assert (spread["mean"], spread["std"], spread["n"]) == pytest.approx((0.75, math.sqrt(0.02), 2))
    title = "Spread across runs: mean ± std of the per-run mean Dice"
    assert md_cell(markdown_report(rows), "CT", title, "vanilla", structure="liver") == "0.750 ± 0.141"
    single_run = [dict(r, fold=0, case=f"{r['case']}{r['fold']}") for r in rows]
    assert "Spread across runs" not in markdown_report(single_run)


def test_paired_test_consistent_gain_is_significant(report_dir):
    """10 pairs, all differences positive and distinct: under the null each sign is a fair coin, and only 'all
    positive' (and, two-sided, 'all negative') is as extreme, so the exact p-value is 2 / 2**10."""
    out, _ = report_dir
    tests = paired_tests(make_rows(), "dice")
    eam = [t for t in tests if t["method"] == "eam"]
    assert len(eam) == 4  # 2 modalities x 2 structures
    for t in eam:
        assert t["n_pairs"] == 10
        assert t["p_value"] == pytest.approx(2 / 2 ** 10)
        assert t["mean_difference"] == pytest.approx(np.mean(GAIN))
    noisy = [t for t in tests if t["method"] == "noisy"]
    assert all(t["p_value"] > 2 / 2 ** 10 for t in noisy)
    cell = md_cell((out / "results.md").read_text(), "MR", "Paired tests against vanilla", "eam", structure="liver",
                   metric="Dice")
    assert cell == f"Δ=+{np.mean(GAIN):.3f}, p={2 / 2 ** 10:.3g}, n=10"


def test_paired_test_too_few_pairs_or_no_difference_is_na():
    def row(method: str, case: str, dice: float) -> dict[str, object]:
        return {"method": method, "modality": "CT", "case": case, "structure": "liver", "dice": dice,
                "hd95": math.nan, "assd": 1.0}

    rows = [row("vanilla", "a", 0.7), row("vanilla", "b", 0.8),
            row("one_pair", "a", 0.9), row("one_pair", "z", 0.9),  # only case a is matched
            row("equal", "a", 0.7), row("equal", "b", 0.8)]
    tests = {t["method"]: t for t in paired_tests(rows, "dice")}
    assert (tests["one_pair"]["n_pairs"], tests["one_pair"]["p_value"]) == (1, None)
    assert tests["one_pair"]["mean_difference"] == pytest.approx(0.2)
    assert (tests["equal"]["n_pairs"], tests["equal"]["p_value"], tests["equal"]["mean_difference"]) == (2, None, 0)
    hd95 = {t["method"]: t for t in paired_tests(rows, "hd95")}
    assert hd95["equal"]["n_pairs"] == 0 and math.isnan(hd95["equal"]["mean_difference"])  # NaN pairs dropped
    markdown = markdown_report(rows)
    title = "Paired tests against vanilla"
    assert md_cell(markdown, "CT", title, "one_pair", structure="liver", metric="Dice") == "Δ=+0.200, p=n/a, n=1"
    assert md_cell(markdown, "CT", title, "equal", structure="liver", metric="Dice") == "Δ=+0.000, p=n/a, n=2"
    assert md_cell(markdown, "CT", title, "equal", structure="liver", metric="HD95 (mm)") == "p=n/a, n=0"


def test_cost_table_ratios(report_dir):
    out, _ = report_dir
    costs = {c["method"]: c for c in cost_summary(read_csv(out / "costs.csv"))}
    assert costs["eam"]["seconds_per_iteration"] == pytest.approx(3.0)  # (2.5 + 3.5) / 2
    assert costs["eam"]["seconds_per_iteration_ratio"] == pytest.approx(1.5)
    assert math.isnan(costs["eam"]["inference_seconds_per_case_ratio"])  # vanilla has no inference time
    markdown = (out / "results.md").read_text()
    assert "| vanilla | 2 | 1.00 | 4000 | 1.00 | n/a | n/a |" in markdown
    assert "| eam | 3 | 1.50 | 6000 | 1.50 | 40 | n/a |" in markdown


def test_png_files_are_valid_images(report_dir):
    _, written = report_dir
    for name, path in written.items():
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            pixels = imread(path)
            assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
            assert pixels.std() > 0  # not a blank canvas


def test_bar_heights_and_box_medians_are_the_csv_numbers(report_dir):
    out, _ = report_dir
    back = read_csv(out / "results.csv")

    def dice_values(structure: str, method: str) -> np.ndarray:
        return np.array([r["dice"] for r in back
                         if (r["modality"], r["structure"], r["method"]) == ("MR", structure, method)])

    ax = dice_bar_figure(back, "MR").axes[0]
    structures = [t.get_text() for t in ax.get_xticklabels()]
    assert structures == STRUCTURES
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}
    assert list(bars) == ["vanilla", "eam", "noisy"]
    for method, heights in bars.items():
        assert heights == pytest.approx([dice_values(s, method).mean() for s in structures])
    box_ax = dice_boxplot_figure(back, "MR").axes[0]
    medians = {line.get_gid(): line.get_ydata()[0] for line in box_ax.lines if line.get_gid()}
    assert len(medians) == 6
    for structure in STRUCTURES:
        for method in bars:
            assert medians[f"median:{structure}:{method}"] == pytest.approx(np.median(dice_values(structure, method)))


def test_training_loss_figure_lines():
    fig = training_loss_figure({"vanilla": [1.0, 0.5], "eam": [0.9, 0.4, 0.2]}, {"eam": [1.2, 0.7, 0.6]})
    lines = {line.get_label(): list(line.get_ydata()) for line in fig.axes[0].lines}
    assert lines == {"vanilla train": [1.0, 0.5], "eam train": [0.9, 0.4, 0.2], "eam val": [1.2, 0.7, 0.6]}
    with pytest.raises(ValueError, match="no training losses"):
        training_loss_figure({})


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    fig = training_loss_figure({"vanilla": [1.0, 0.5]})

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_invalid_rows_raise(tmp_path):
    rows = make_rows()
    with pytest.raises(ValueError, match="lacks"):
        markdown_report([{k: v for k, v in rows[0].items() if k != "dice"}])
    with pytest.raises(ValueError, match="two rows"):
        paired_tests(rows + [rows[0]])
    with pytest.raises(ValueError, match="no rows"):
        write_csv([], tmp_path / "x.csv")
    with pytest.raises(ValueError, match="modality"):
        dice_bar_figure(rows, "PET")


def test_modality_names_become_safe_file_names(tmp_path):
    rows = [dict(r, modality="MR/T1") for r in make_rows() if r["modality"] == "MR"]
    written = write_report(rows, tmp_path)
    assert (tmp_path / "dice_boxplot_MR_T1.png").is_file() and "training_loss.png" not in written
