"""The wheel and the sdist carry what an installed onion-gateway and a packager need.

pyproject.toml lists the packages explicitly (templates/ lives outside the package and is mapped in as
onion_gateway.templates), so a new subpackage that is not listed would be missing from the wheel and the
.deb while every test from the source tree still passes. These tests read the lists, not a build.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_packages() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_python_package_is_listed_for_the_wheel():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "onion_gateway").rglob("__init__.py")}
    assert found - listed_packages() == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_every_template_directory_is_listed_for_the_wheel():
    found = {"onion_gateway.templates." + p.name for p in (ROOT / "templates").iterdir()
             if p.is_dir() and any(p.glob("*.j2"))}
    assert found - listed_packages() == set(), "add these to [tool.setuptools] packages in pyproject.toml"


def test_sdist_manifest_carries_tests_docs_and_license():
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    for needed in ("tests", "examples", "docs", "LICENSE", "CHANGELOG.md", "debian"):
        assert needed in manifest
