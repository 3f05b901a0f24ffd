"""The docs site (mkdocs.yml, docs/) and the study folders (issue 31 items 3-4): every study is a
page, the build needs no network, and no study folder commits run dumps. `make docs` (in
.ci/run) builds the site with --strict, which fails on a broken link."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(node) -> list:
    """Every page path of a MkDocs nav (nested lists of 'title: page' dicts and bare pages)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _nav_pages(v)]
    return []


@pytest.fixture(scope="module")
def mkdocs_cfg() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_nav_page_exists(mkdocs_cfg):
    docs = ROOT / mkdocs_cfg.get("docs_dir", "docs")
    pages = _nav_pages(mkdocs_cfg["nav"])
    assert pages, "mkdocs.yml has an empty nav"
    missing = [p for p in pages if not (docs / p).is_file()]
    assert not missing, f"nav pages missing under {docs}: {missing}"


def test_every_study_readme_is_a_page(mkdocs_cfg):
    """A study folder with a README is in the nav (docs/experiments links to experiments/)."""
    assert (ROOT / "docs" / "experiments").resolve() == (ROOT / "experiments").resolve()
    pages = set(_nav_pages(mkdocs_cfg["nav"]))
    studies = sorted(f"experiments/{d.name}/README.md" for d in (ROOT / "experiments").iterdir()
                     if (d / "README.md").is_file())
    assert studies, "no study READMEs found"
    assert not [s for s in studies if s not in pages], f"studies not in the docs nav: {studies}"


def test_build_needs_no_network(mkdocs_cfg):
    """No web fonts and none of Material's plugins that fetch at build time."""
    assert mkdocs_cfg["theme"]["name"] == "material"
    assert mkdocs_cfg["theme"].get("font") is False, "theme.font must be false (no Google Fonts)"
    plugins = {p if isinstance(p, str) else next(iter(p)) for p in mkdocs_cfg.get("plugins", [])}
    assert not plugins & {"social", "privacy", "optimize"}, plugins
    assert mkdocs_cfg.get("strict") is True


@pytest.mark.medium  # runs `git ls-files` (a subprocess)
@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_study_folders_commit_no_run_dumps():
    """Study folders hold scripts and results: no Hydra .hydra/ folders, no logs in git."""
    files = subprocess.run(["git", "ls-files", "experiments"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    assert files, "git ls-files found no study files"
    dumps = [f for f in files if "/.hydra/" in f or f.endswith(".log")]
    assert not dumps, f"run dumps committed under experiments/: {dumps[:5]} ({len(dumps)} in all)"


def test_readme_is_a_front_page():
    """README.md: the two commands first (both Makefile targets), under ~250 lines, and every
    relative link resolves (mkdocs --strict checks docs/, not the README)."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250, "README.md is the front page: move manual text to docs/"
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "train"], ["make", "test"]], first_block
    targets = (ROOT / "Makefile").read_text()
    assert "\ntrain:" in targets and "\ntest:" in targets and "\ndocs:" in targets
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"^[a-z]+:", link)]
    assert any(link.startswith("docs/") for link in local), "README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
