"""The package names its license, and ships the license it names."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_pyproject_names_apache_2_and_ships_its_text():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 150  # the full text


def test_the_repository_stands_on_its_own():
    """Every relative link in the Markdown files points at a file of this repository, and nothing
    refers to the notes beside the checkout (they are not part of the product)."""
    outside = "../" + "shared"  # spelled apart so that this file does not match itself
    texts = [p for p in REPO.rglob("*") if p.suffix in {".md", ".py", ".toml", ".txt"}
             and not any(part.startswith(".") or part in {"build", "dist"} or part.endswith(".egg-info")
                         for part in p.relative_to(REPO).parts)]
    assert len(texts) > 20
    for path in texts:
        text = path.read_text(errors="replace")
        assert outside not in text, f"{path.relative_to(REPO)} refers to {outside}"
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)", text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                resolved = (path.parent / target).resolve()
                assert resolved.is_relative_to(REPO) and resolved.exists(), \
                    f"{path.relative_to(REPO)} links to {target}, which is not in the repository"
