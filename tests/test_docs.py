"""The documentation site (mkdocs + mkdocstrings) builds from the docstrings, the README, RESULTS
and the notebooks with warnings as errors, so a broken docstring reference fails the suite."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mkdocs_build(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=cwd, capture_output=True, text=True)


def test_the_docs_build_strict(tmp_path):
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site", ROOT)  # snippets are read from the root
    assert built.returncode == 0, built.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "training" / "index.html").read_text()
    assert "TrainingState" in page and "HostPrepared" in page  # rendered from the docstrings
    assert (tmp_path / "site" / "notebooks" / "07-protein-backbones" / "index.html").is_file()


def test_a_broken_reference_fails_the_build(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("See [the loop][geoflow.train.no_such_name].\n\n::: geoflow.commands\n")
    (tmp_path / "mkdocs.yml").write_text(f"INHERIT: {ROOT / 'mkdocs.yml'}\ndocs_dir: docs\nnav: [index.md]\n")
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert built.returncode != 0 and "geoflow.train.no_such_name" in built.stderr, built.stderr[-2000:]
