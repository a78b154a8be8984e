"""The release artifacts: `python -m build` makes an sdist that holds every Cython source and a
wheel, built from that sdist, with every compiled extension; the wheel installs into a fresh
virtualenv and `gateway demo` serves from it, with nothing of the source tree on the path.

Compiling the extensions takes minutes, so the artifacts are built once per source state: they
are kept in build/artifact-test/<hash of every file the sdist takes>/ and rebuilt only when a
source changes (the suite then pays the compile once, a rerun only the install and the demo).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.gateway_proc import REPO, free_port

pytestmark = pytest.mark.slow

CACHE = REPO / "build" / "artifact-test"
SOURCES = ("*.py", "*.pyx", "*.pxd", "*.pyi", "*.toml", "*.html", "py.typed")
TOP = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md")


def _source_files() -> list[Path]:
    files = {REPO / name for name in TOP}
    for pattern in SOURCES:
        files.update(p for p in (REPO / "gateway").rglob(pattern) if "__pycache__" not in p.parts)
    return sorted(files)


def _source_key() -> str:
    h = hashlib.sha256()
    for path in _source_files():
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _compiled_modules() -> list[str]:
    """Every extension setup.py declares, as dotted names (read from setup.py, not repeated here)."""
    ns: dict[str, object] = {}
    text = (REPO / "setup.py").read_text()
    exec(text[text.index("FAST_MODULES = "):text.index("DEBUG = ")], ns)  # the two literal tables
    fast = [f"gateway._fast.{m}" for m in ns["FAST_MODULES"]]  # type: ignore[union-attr]
    return fast + list(ns["DATAPLANE_MODULES"].values())  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def dists() -> tuple[Path, Path]:
    out = CACHE / _source_key()
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    if not (wheels and sdists):
        if CACHE.exists():
            shutil.rmtree(CACHE)    # artifacts of older sources: never kept around
        # --no-isolation: the build runs with this environment's setuptools, wheel and Cython
        # (the test extra installs them) instead of downloading them; sdist, then the wheel
        # from the unpacked sdist, exactly as a release build does.
        p = subprocess.run(
            [sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--outdir", str(out), "."],
            cwd=str(REPO), capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, (wheels, sdists)
    return sdists[0], wheels[0]


def test_the_sdist_holds_every_cython_source_and_no_generated_code(dists) -> None:
    sdist, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    want = {str(p.relative_to(REPO)) for p in (REPO / "gateway").rglob("*") if p.suffix in (".pyx", ".pxd")}
    assert want and want <= names, sorted(want - names)
    assert {"setup.py", "pyproject.toml", "MANIFEST.in", "deploy/gateway.service", "deploy/Dockerfile"} <= names
    generated = [n for n in names if n.endswith((".c", ".so", ".o"))]
    assert generated == []


def test_the_wheel_has_every_compiled_extension(dists) -> None:
    _, wheel = dists
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    missing = [m for m in _compiled_modules() if m.replace(".", "/") + suffix not in names]
    assert missing == []
    assert {"gateway/demo/demo.toml", "gateway/observability/assets/dashboard.html", "gateway/py.typed"} <= names
    assert not [n for n in names if n.endswith(".c")]


def test_the_wheel_installs_into_a_fresh_venv_and_the_demo_runs(dists, tmp_path: Path) -> None:
    _, wheel = dists
    # Nothing of the source tree: without PYTHONPATH (the suite runs with the tree on it), pip
    # would even find `gateway` "already installed" there and skip the wheel.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120, env=env)
    py = venv / "bin" / "python"
    # The wheel itself, into the fresh venv (pip of this environment, aimed at that interpreter).
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, timeout=300,
                       env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Successfully installed gateway" in p.stdout, p.stdout
    # Its dependencies without a download: this environment's site-packages, after the venv's own
    # (a plain path line in a .pth: that directory's own .pth files, the editable install of the
    # source tree among them, are not processed).
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = subprocess.run(
        [str(py), "-c", "import gateway, gateway.http.downstream as d; print(gateway.__file__); print(d.__file__)"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    init, downstream = where.stdout.split()
    assert init.startswith(str(venv)) and downstream.startswith(str(venv)), where.stdout
    assert downstream.endswith(sysconfig.get_config_var("EXT_SUFFIX"))   # compiled, not a .py fallback

    port, admin = free_port(), free_port()
    env.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_ADMIN_HOST="127.0.0.1",
               GATEWAY_ADMIN_PORT=str(admin), PYTHONUNBUFFERED="1")
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen([str(venv / "bin" / "gateway"), "demo"], cwd=str(tmp_path), env=env,
                                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "Ctrl-C stops it" not in out.read_text(errors="replace"):
                assert demo.poll() is None, out.read_text(errors="replace")
                assert time.monotonic() < deadline, out.read_text(errors="replace")
                time.sleep(0.1)
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", "/users/2")
            r = c.getresponse()
            body = r.read()
            c.close()
            assert r.status == 200, body
            assert json.loads(body)["name"] == "Alan Turing"
            demo.send_signal(signal.SIGTERM)
            assert demo.wait(30) == 0, out.read_text(errors="replace")
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait(10)
