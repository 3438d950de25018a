"""tools/synthetic_report.py: the synthetic benchmark's report, in docs/ and in the README."""
from __future__ import annotations

from pathlib import Path

import pytest

from gopro_prompts.tools import synthetic_report as sr

REPO = Path(__file__).resolve().parents[1]


def _compare_dir(tmp_path):
    compare = tmp_path / "compare"
    compare.mkdir()
    (compare / "base2new.md").write_text("| Dataset | Method | Base |\n|---|---|---|\n| SyntheticObjects | CoOp | 33.3 |\n")
    (compare / "xd.md").write_text("| Method | SyntheticPatterns |\n|---|---|\n| CoOp | 27.5 |\n")
    return compare  # no dg.md: that protocol's runs failed


def test_report_holds_the_saved_tables_and_says_what_is_missing(tmp_path):
    report = sr.render(str(_compare_dir(tmp_path)), minutes=21, seeds="1,2,3", epochs=4, cores=2, jobs=2)
    assert report.startswith("# Synthetic benchmark results")
    assert "| SyntheticObjects | CoOp | 33.3 |" in report and "| CoOp | 27.5 |" in report
    assert "(no table:" in report and "dg.md was not written" in report
    assert "this run: 21 min on 2 CPU cores, 2 runs at a time" in report
    assert "Synthetic data, tiny model" in report  # labelled as synthetic
    assert "resumed" not in report
    resumed = sr.render(str(tmp_path / "compare"), minutes=1, seeds="1", epochs=4, cores=2, jobs=1, resumed=True)
    assert "this run: 1 min on 2 CPU cores; it resumed an earlier run" in resumed and "not the whole time" in resumed


def test_main_writes_docs_and_only_the_readme_section(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\n### Synthetic benchmark results\n\n{sr.BEGIN}\nold numbers\n{sr.END}\n\n"
                      "#### Observations\n\nkept\n")
    results = tmp_path / "docs" / "synthetic_results.md"
    args = [str(_compare_dir(tmp_path)), "--results", str(results), "--readme", str(readme),
            "--minutes", "21", "--seeds", "1,2,3", "--epochs", "4", "--cores", "2"]
    assert sr.main(args) == 0
    text = readme.read_text()
    assert "old numbers" not in text and "| CoOp | 27.5 |" in text
    assert text.startswith("# Project\n\n### Synthetic benchmark results\n\n")
    assert text.endswith(f"{sr.END}\n\n#### Observations\n\nkept\n")
    # under the README's ### heading the report's headings move two levels down, its title goes
    assert "#### Base-to-new generalisation (SyntheticObjects)" in text and "\n# Synthetic benchmark results" not in text
    assert results.read_text().startswith("# Synthetic benchmark results")
    assert sr.main(args) == 0 and readme.read_text() == text  # idempotent


def test_a_readme_without_the_markers_is_a_clear_error_and_nothing_is_written(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    results = tmp_path / "out.md"
    code = sr.main([str(_compare_dir(tmp_path)), "--results", str(results), "--readme", str(readme),
                    "--minutes", "1", "--seeds", "1", "--epochs", "1", "--cores", "2"])
    assert code == 2 and not results.exists() and readme.read_text() == "# Project\n"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "put them back" in err and err.count("\n") == 1


@pytest.mark.parametrize("readme", ["no markers", f"{sr.END}\n{sr.BEGIN}", f"{sr.BEGIN}\n{sr.BEGIN}\n{sr.END}"])
def test_splice_refuses_misplaced_markers(readme):
    with pytest.raises(sr.ReportError, match="markers"):
        sr.splice(readme, "x")


def test_the_readme_section_is_the_committed_report():
    """The README's synthetic tables are the ones docs/synthetic_results.md holds (both written by one run)."""
    readme = (REPO / "README.md").read_text()
    assert readme.count(sr.BEGIN) == 1 and readme.count(sr.END) == 1
    section = readme.split(sr.BEGIN)[1].split(sr.END)[0].strip("\n")
    report = (REPO / "docs" / "synthetic_results.md").read_text()
    assert section == sr.readme_section(report.split("\n## Observations")[0])
