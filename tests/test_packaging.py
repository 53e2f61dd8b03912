"""The wheel carries templates/, filters/, pipelines/ and data/, and synth finds them when
installed from it (not only in a source checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("synth-*.whl")
    return path


def test_wheel_ships_resources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, inside in (
        ("templates", "templates"),
        ("pipelines", "pipelines"),
        ("data", "data"),
        ("filters", "filters_presets"),
    ):
        shipped = {p.relative_to(REPO / kind).as_posix() for p in (REPO / kind).rglob("*") if p.is_file()}
        assert shipped, kind
        missing = [s for s in shipped if f"synth/{inside}/{s}" not in names]
        assert not missing, (kind, missing)
    # `synth view`'s page: served from the package, never from a CDN
    assert {f"synth/view/static/{n}" for n in ("index.html", "app.js", "app.css")} <= names


def test_installed_wheel_finds_its_resources(wheel, tmp_path):
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = (
        "import synth.resources as r; "
        "print(r.resource_dir('templates')); print(r.resource_dir('filters')); "
        "print('quickstart.yaml' in r.list_resources('pipelines'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": ""},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    templates, filters, has_quickstart = result.stdout.split()
    assert templates == str(target / "synth" / "templates")
    assert filters == str(target / "synth" / "filters_presets")
    assert has_quickstart == "True"
