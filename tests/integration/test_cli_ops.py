"""What an operator reaches for on the command line (issue 13.2-13.4): help, version, check --dump
with every secret masked, and check refusing what `run` would refuse (real `python -m gateway`)."""
from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli_help import COMMANDS
from gateway.config import loads_config
from gateway.config.reference import env_rows
from tests.integration.test_cli import gw
from tests.support.gateway_proc import GatewayProcess, free_port

FULL_TOML = """
[[services]]
name = "users"
balancer = "consistent_hash"
hash_key = "header:x-user"
targets = [{ url = "http://127.0.0.1:9001", version = "v1", weight = 3 }, "http://127.0.0.1:9002"]
[services.health]
path = "/hz"
[services.breaker]
failure_statuses = [502, 503]

[[routes]]
name = "api"
path = "=/api"
host = "api.example.com"
service = "users"
methods = ["GET", "POST"]
timeout = 2.5
auth = ["api_key"]
scopes = ["users:read"]
content_types = ["application/json"]
canary = { version = "v1", weight = 5, header = "x-canary" }
fallback = { status = 200, body = "{\\"items\\": []}" }
[[routes.rate_limits]]
key = "header:X-Key"
limit = 10
window = 1
algorithm = "token_bucket"
burst = 5

[[routes]]
name = "rest"
path = "/"
service = "users"

[quotas]
default_user = { limit = 100, window = 60 }
[quotas.users."bob@example.com"]
limit = 5
window = 60
[quotas.orgs.acme]
limit = 50
window = 60
user_limit = 10
"""

# One value per secret the gateway can be given: none may appear anywhere in check's output.
SECRETS = {
    "GATEWAY_ADMIN_TOKEN": "admintoken-SECRET-1",
    "GATEWAY_JWT_SECRET": "jwtsecret-SECRET-2-0123456789abcdefghijkl",
    "GATEWAY_ALERT_SECRET": "alertsecret-SECRET-3",
    "GATEWAY_REDIS_URL": "redis://gw:redispw-SECRET-4@127.0.0.1:6379/0?password=querypw-SECRET-5",
    "GATEWAY_ALERT_WEBHOOKS": "https://hooks.example.com/T0/B0/hookpath-SECRET-6,https://u:hookpw-SECRET-7@h.example.com/x",
    "GATEWAY_JWT_JWKS_URL": "https://idp:jwkspw-SECRET-8@idp.example.com/jwks.json",
}
SECRET_VALUES = ["admintoken-SECRET-1", "jwtsecret-SECRET-2", "alertsecret-SECRET-3", "redispw-SECRET-4",
                 "querypw-SECRET-5", "hookpath-SECRET-6", "hookpw-SECRET-7", "jwkspw-SECRET-8"]


def _ports() -> dict[str, str]:
    return {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "GATEWAY_ADMIN_PORT": str(free_port())}


# --- help and version ------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"], *([c, "--help"] for c in COMMANDS if c != "help"),
                                  ["help", "check"], ["apikey", "create", "--help"]])
def test_every_help_lists_every_variable_with_its_default(argv: list[str]) -> None:
    p = gw(*argv)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: gateway" if len(argv) > 1 and argv[0] != "help" or argv == ["help", "check"]
                               else "gateway " + __version__)
    for var, default, _, _, _ in env_rows():
        shown = f"  {var}\n" if default == "unset" else f"  {var}={default}"
        assert shown in p.stdout.replace("   (secret)", ""), f"{var} missing from {argv} help"
    assert p.stderr == ""


def test_top_help_names_every_command_and_a_bad_command_points_to_it() -> None:
    p = gw("--help")
    for name in COMMANDS:
        assert f"\n  {name:<8}gateway" in p.stdout
    bad = gw("frobnicate")
    assert bad.returncode == 2 and "unknown command 'frobnicate'" in bad.stderr and "gateway --help" in bad.stderr
    assert gw("help", "frobnicate").returncode == 2


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version(argv: list[str]) -> None:
    p = gw(*argv)
    assert (p.returncode, p.stdout) == (0, f"gateway {__version__}\n")


def test_help_and_version_answer_whatever_the_environment_holds() -> None:
    bad = {"GATEWAY_LOG_LEVEL": "loud", "GATEWAY_PORT": "eighty"}
    assert gw("check", env=bad).returncode == 2
    assert gw("--help", env=bad).returncode == 0
    assert gw("check", "--help", env=bad).returncode == 0
    assert gw("--version", env=bad).returncode == 0


# --- check --dump ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--dump", "-T"])
def test_check_dump_masks_every_secret_and_reads_back(tmp_path: Path, flag: str) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(FULL_TOML)
    p = gw("check", flag, env={"GATEWAY_CONFIG": str(cfg), **SECRETS})
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    for secret in SECRET_VALUES:
        assert secret not in out, f"{secret} leaked into check {flag}"
    assert "GATEWAY_ADMIN_TOKEN=<set, hidden>" in p.stdout
    assert "GATEWAY_REDIS_URL=redis://gw:***@127.0.0.1:6379/0?password=***" in p.stdout
    assert "GATEWAY_ALERT_WEBHOOKS=https://hooks.example.com/***,https://h.example.com/***" in p.stdout
    # Everything after the variables is TOML: the configuration in force, defaults written out,
    # which reads back to the same services, routes and quotas.
    dumped = p.stdout[p.stdout.index("\n# configuration in force"):]
    assert "interval = 5.0" in dumped and "strip_prefix = false" in dumped   # defaults are shown
    tomllib.loads(dumped)
    again, original = loads_config(dumped), loads_config(FULL_TOML)
    assert (again.services, again.routes, again.quotas) == (original.services, original.routes, original.quotas)


def test_check_without_dump_prints_no_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(FULL_TOML)
    p = gw("check", env={"GATEWAY_CONFIG": str(cfg)})
    assert p.returncode == 0 and "[[services]]" not in p.stdout
    assert gw("check", "--dmup").returncode == 2


# --- check refuses what run would refuse -----------------------------------------------------------

@pytest.mark.parametrize(("env", "var", "words"), [
    ({"GATEWAY_HOST": "no-such-host.invalid"}, "GATEWAY_HOST", "does not resolve"),
    ({"GATEWAY_ADMIN_HOST": "no-such-host.invalid"}, "GATEWAY_ADMIN_HOST", "does not resolve"),
    ({"GATEWAY_HOST": "192.0.2.1"}, "GATEWAY_HOST", "not an address of this machine"),   # TEST-NET-1
    ({"GATEWAY_ADMIN_HOST": "192.0.2.1"}, "GATEWAY_ADMIN_HOST", "not an address of this machine"),
])
def test_check_refuses_a_host_run_could_not_listen_on(env: dict[str, str], var: str, words: str) -> None:
    p = gw("check", env={**_ports(), **env})
    assert p.returncode == 2, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateway: {var}: ") and words in lines[0], p.stderr
    # and run does refuse it (so check is not stricter than run)
    r = gw("run", env={**_ports(), **env}, timeout=30)
    assert r.returncode != 0


def test_check_refuses_data_and_admin_on_one_address() -> None:
    port = str(free_port())
    p = gw("check", env={"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": port, "GATEWAY_ADMIN_PORT": port})
    assert p.returncode == 2 and "GATEWAY_ADMIN_PORT" in p.stderr and "overlaps the data listener" in p.stderr


@pytest.mark.parametrize("which", ["GATEWAY_PORT", "GATEWAY_ADMIN_PORT"])
def test_check_bind_test_refuses_a_port_already_taken(which: str) -> None:
    env = _ports()
    holder = socket.socket()
    holder.bind(("127.0.0.1", int(env[which])))
    holder.listen(1)
    try:
        assert gw("check", env=env).returncode == 0      # without --bind-test, ports are not tried
        p = gw("check", "--bind-test", env=env)
    finally:
        holder.close()
    assert p.returncode == 2
    assert f"gateway: {which}: 127.0.0.1:{env[which]} is already in use" in p.stderr and f"set {which}" in p.stderr
    assert gw("check", "--bind-test", env=env).returncode == 0   # free again


# --- the start-up line -----------------------------------------------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_start_up_log_names_version_file_counts_and_workers(tmp_path: Path, workers: str) -> None:
    with GatewayProcess(FULL_TOML, env={"GATEWAY_WORKERS": workers}) as g:
        line = next(ln for ln in g.stderr.splitlines() if " starting: " in ln)
        plural = "worker" if workers == "1" else "workers"
        assert (f"gateway {__version__} starting: config {g.config_path} (1 services, 2 routes), "
                f"{workers} {plural}, data 127.0.0.1:{g.port}, admin 127.0.0.1:{g.admin_port}") in line
        assert g.stop() == 0


@pytest.mark.parametrize("var", ["GATEWAY_ACCESS_LOG", "GATEWAY_AUDIT_LOG"])
def test_check_refuses_a_log_file_that_cannot_be_opened(tmp_path: Path, var: str) -> None:
    missing_dir = tmp_path / "no-such-dir" / "gateway.log"
    p = gw("check", env={**_ports(), var: str(missing_dir)})
    assert p.returncode == 2
    assert p.stderr.strip() == f"gateway: {var}: cannot open {str(missing_dir)!r} for appending: No such file or directory"
    assert not missing_dir.parent.exists()                  # check creates nothing
    ok = gw("check", env={**_ports(), var: str(tmp_path / "gateway.log")})
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / "gateway.log").exists()


def test_help_toml_lists_every_key_of_the_file() -> None:
    from gateway.config.keys import KEYS

    p = gw("help", "toml")
    assert p.returncode == 0, p.stderr
    for k in KEYS:
        assert f"\n  {k.path}   (" in p.stdout, k.path
    assert "range 0.001-86400" in p.stdout
