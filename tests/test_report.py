"""The README's results section is rendered from assets/results (python -m isa_demo bench report)."""
import math

import pandas as pd
import pytest

from isa_demo.bench.report import BEGIN, END, REPO, markdown_table, render, update_readme


def test_readme_results_section_matches_the_measured_tables():
    assert update_readme(REPO / "README.md", REPO / "assets" / "results", check=True), \
        "README.md is out of date with assets/results: run `python -m isa_demo bench report`"


def test_markdown_table_formats_cells():
    df = pd.DataFrame({"name": ["a", "b"], "n": [3, 4], "x": [0.12345, math.nan], "extra": [1, 2]})
    assert markdown_table(df, ["name", "n", "x", "missing"], 2).splitlines() == [
        "| name | n | x |", "|---|---|---|", "| a | 3 | 0.12 |", "| b | 4 |  |"]


def test_update_rewrites_only_the_block(tmp_path):
    results = tmp_path / "assets" / "results"
    results.mkdir(parents=True)
    pd.DataFrame({"model": ["m"], "direction": ["caption->image"], "R@10": [0.9]}).to_csv(
        results / "vl_retrieval.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\nstale\n{END}\noutro\n")
    assert not update_readme(readme, results, check=True)
    assert "stale" in readme.read_text()  # --check never writes
    assert not update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "stale" not in text
    assert "| m | caption->image | 0.900 |" in text and "(undated)" in text
    assert "`python -m isa_demo bench app`: not run yet." in text
    assert update_readme(readme, results, check=True)
    assert render(results) in text


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="RESULTS:BEGIN"):
        update_readme(readme, tmp_path)
