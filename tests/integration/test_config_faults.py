"""Configuration faults seen through the real `gateway` command: `check`, `run` and SIGHUP reload
refuse the same things the same way (exit 2 with one line per problem at start, "reload refused"
with the old configuration still serving at reload)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    REPO,
    child_pids,
    free_port,
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)


def run_gateway(*args: str, env: dict[str, str] | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full.update(PYTHONPATH=str(REPO), GATEWAY_HOST="127.0.0.1", GATEWAY_ADMIN_HOST="127.0.0.1",
                GATEWAY_PORT=str(free_port()), GATEWAY_ADMIN_PORT=str(free_port()))
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=full, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)


def problem_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if ln.startswith("gateway: ")]


def assert_refused(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, and one problem line holding every needle; returns that line."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = problem_lines(p)
    hits = [ln for ln in lines if all(n in ln for n in needles)]
    assert hits, p.stderr
    return hits[0]


# --- 13. numeric ranges ----------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["check", "run"])
def test_a_huge_integer_setting_exits_2_naming_variable_and_range(cmd: str) -> None:
    p = run_gateway(cmd, env={"GATEWAY_MAX_CONNECTIONS": str(2**63), "GATEWAY_WORKERS": "2"})
    assert_refused(p, "GATEWAY_MAX_CONNECTIONS", "1-1000000", str(2**63))


@pytest.mark.parametrize("cmd", ["check", "run"])
def test_a_huge_toml_duration_exits_2_naming_path_and_range(cmd: str, tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(routes_toml("http://127.0.0.1:9", ["/a"]) + "timeout = 1e300\n")
    p = run_gateway(cmd, env={"GATEWAY_CONFIG": str(cfg)})
    assert_refused(p, "routes[0].timeout", "0.001-86400")


def test_an_out_of_range_reload_is_refused_and_the_old_config_serves(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a"]))
    gw.write_config(routes_toml(upstream.url, ["/a", "/b"]) + f"retries = {2**63}\n")
    gw.reload()
    err = gw.wait_stderr("reload refused")
    assert "routes[1].retries: expected an integer 0-100" in err
    assert http_get(gw.port, "/a")[0] == 200 and http_get(gw.port, "/b")[0] == 404
    assert gw.stop() == 0


# --- 12. data and admin listeners on one address -----------------------------------------------

@pytest.mark.parametrize("cmd", ["check", "run"])
@pytest.mark.parametrize("hosts", [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1")])
def test_data_and_admin_on_one_address_exit_2_naming_both(cmd: str, hosts: tuple[str, str]) -> None:
    # Before: `check` said OK, and `run` with two workers left a supervisor with zero workers.
    port = str(free_port())
    p = run_gateway(cmd, env={"GATEWAY_HOST": hosts[0], "GATEWAY_ADMIN_HOST": hosts[1], "GATEWAY_PORT": port,
                              "GATEWAY_ADMIN_PORT": port, "GATEWAY_WORKERS": "2"}, timeout=20)
    line = assert_refused(p, "GATEWAY_PORT", "GATEWAY_ADMIN_PORT", "GATEWAY_HOST", "GATEWAY_ADMIN_HOST")
    assert len(problem_lines(p)) == 1, p.stderr
    assert port in line


# --- 15. deeply nested TOML --------------------------------------------------------------------

DEEP_TOML = {
    "arrays": "x = " + "[" * 10000 + "]" * 10000 + "\n",
    "inline tables": "x = " + "{ y = " * 10000 + "1" + " }" * 10000 + "\n",
}
TOO_DEEP = "nesting too deep"


@pytest.mark.parametrize("cmd", ["check", "run"])
@pytest.mark.parametrize("kind", sorted(DEEP_TOML))
def test_deep_toml_exits_2_with_one_line(cmd: str, kind: str, tmp_path: Path) -> None:
    # Before: a RecursionError traceback (thousands of lines) and exit 1.
    cfg = tmp_path / "deep.toml"
    cfg.write_text(routes_toml("http://127.0.0.1:9", ["/a"]) + DEEP_TOML[kind])
    p = run_gateway(cmd, env={"GATEWAY_CONFIG": str(cfg)})
    line = assert_refused(p, str(cfg), TOO_DEEP)
    assert problem_lines(p) == [line]
    assert len(p.stderr.splitlines()) == 1, p.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("kind", sorted(DEEP_TOML))
def test_deep_toml_reload_is_refused_and_the_old_config_serves(gateway, upstream, workers: str,  # noqa: F811
                                                               kind: str) -> None:
    # With workers the supervisor's snapshot (what replacement workers boot from) refuses it too.
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": workers})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    gw.write_config(routes_toml(upstream.url, ["/a", "/b"]) + DEEP_TOML[kind])
    gw.reload()
    gw.wait_stderr("reload refused")   # once per node (the supervisor, or the lone process)
    if workers != "1":
        gw.wait_stderr("reload: replacement workers keep booting from the last valid config")
    err = gw.stderr
    assert all(TOO_DEEP in ln for ln in err.splitlines() if "reload refused" in ln), err
    assert "Traceback" not in err and "RecursionError" not in err, err
    assert len(err.splitlines()) < 20, err
    for _ in range(4):
        assert http_get(gw.port, "/a")[0] == 200 and http_get(gw.port, "/b")[0] == 404
    assert gw.alive()
    assert gw.stop() == 0


# --- 16. empty and routes-less files -----------------------------------------------------------

@pytest.mark.parametrize("cmd", ["check", "run"])
@pytest.mark.parametrize("text", ["", " \n\n\t\n"], ids=["empty", "whitespace"])
def test_an_empty_file_exits_2_naming_it(cmd: str, text: str, tmp_path: Path) -> None:
    cfg = tmp_path / "empty.toml"
    cfg.write_text(text)
    p = run_gateway(cmd, env={"GATEWAY_CONFIG": str(cfg)})
    assert_refused(p, str(cfg), "the file is empty")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_empty_file_at_reload_is_refused_and_the_old_routes_answer(gateway, upstream,  # noqa: F811
                                                                       workers: str) -> None:
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": workers})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    # What a reload sees while an editor rewrites the file in place: it is truncated first.
    assert gw.config_path is not None
    gw.config_path.write_text("")
    gw.reload()
    gw.wait_stderr("reload refused")   # once per node (the supervisor, or the lone process)
    assert "the file is empty" in gw.stderr
    for _ in range(4):
        assert http_get(gw.port, "/a")[0] == 200
    if workers != "1":
        # The snapshot replacement workers boot from is still the old config: kill one, and its
        # replacement serves /a too.
        gw.wait_stderr("reload: replacement workers keep booting from the last valid config")
        os.kill(child_pids(gw.pid)[0], signal.SIGKILL)
        wait_until(lambda: gw.stderr.count("worker: listening on") >= 3)
        for _ in range(10):
            assert http_get(gw.port, "/a")[0] == 200
    assert gw.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_file_without_routes_starts_with_one_warning_naming_it(gateway, workers: str) -> None:  # noqa: F811
    gw = gateway('[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:9"]\n', env={"GATEWAY_WORKERS": workers})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    assert http_get(gw.port, "/anything")[0] == 404
    warnings = [ln for ln in gw.stderr.splitlines() if " WARNING " in ln and "no [[routes]]" in ln]
    assert len(warnings) == 1, gw.stderr
    assert str(gw.config_path) in warnings[0]
    assert gw.stop() == 0


def test_check_warns_about_a_file_without_routes(tmp_path: Path) -> None:
    cfg = tmp_path / "noroutes.toml"
    cfg.write_text('[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:9"]\n')
    p = run_gateway("check", env={"GATEWAY_CONFIG": str(cfg)})
    assert p.returncode == 0, p.stderr
    assert f"WARNING config: {cfg} has no [[routes]]" in p.stderr
