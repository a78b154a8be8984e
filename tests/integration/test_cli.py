"""The `gateway` command: exit codes and messages (real subprocesses of `python -m gateway`)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gateway_proc import REPO, free_port

GOOD_TOML = """
[[services]]
name = "echo"
targets = [{ url = "http://127.0.0.1:9" }]

[[routes]]
name = "all"
path = "/"
service = "echo"
"""


def gw(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full["PYTHONPATH"] = str(REPO)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=full, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)


def test_check_defaults_is_valid() -> None:
    p = gw("check", env={"GATEWAY_LOG_LEVEL": "debug"})
    assert p.returncode == 0, p.stderr
    assert "GATEWAY_LOG_LEVEL=debug" in p.stdout
    assert "warning" not in p.stderr
    assert "GATEWAY_PORT=8080" in p.stdout
    assert "GATEWAY_WORKERS=1" in p.stdout
    assert "0 routes: OK" in p.stdout


def test_check_masks_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(GOOD_TOML)
    p = gw("check", env={
        "GATEWAY_CONFIG": str(cfg),
        "GATEWAY_ADMIN_TOKEN": "admintoken-s3cr3t",
        "GATEWAY_JWT_SECRET": "jwt-s3cr3t-value-0123456789abcdefgh",
    })
    assert p.returncode == 0, p.stderr
    assert "s3cr3t" not in p.stdout + p.stderr
    assert "GATEWAY_ADMIN_TOKEN=<set, hidden>" in p.stdout
    assert "GATEWAY_JWT_SECRET=<set, hidden>" in p.stdout
    assert f"GATEWAY_CONFIG={cfg}" in p.stdout
    assert "1 services, 1 routes: OK" in p.stdout


@pytest.mark.parametrize("cmd", ["run", "check"])
def test_bad_env_var_exits_2_naming_it(cmd: str) -> None:
    p = gw(cmd, env={"GATEWAY_PORT": "eighty", "GATEWAY_DRAIN_TIMEOUT": "-1"})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert any("GATEWAY_PORT" in line and "eighty" in line for line in lines), p.stderr
    assert any("GATEWAY_DRAIN_TIMEOUT" in line for line in lines), p.stderr
    assert len(lines) == 2, "one line per problem"


@pytest.mark.parametrize("cmd", ["run", "check"])
def test_bad_toml_syntax_exits_2_with_the_path(tmp_path: Path, cmd: str) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[[routes]\nname = ")
    p = gw(cmd, env={"GATEWAY_CONFIG": str(cfg)})
    assert p.returncode == 2
    assert str(cfg) in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_bad_toml_values_exit_2_one_line_each_with_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GOOD_TOML + '\n[[routes]]\nname = "x"\npath = "/x"\nservice = "echo"\nlimt = 3\n'
                   '\n[[routes]]\nname = "y"\npath = "/y"\nservice = "nope"\n')
    p = gw("run", env={"GATEWAY_CONFIG": str(cfg), "GATEWAY_PORT": str(free_port())})
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert any("routes[1].limt" in line for line in lines), p.stderr
    assert any("routes[2].service" in line for line in lines), p.stderr
    assert all(line.startswith("gateway: ") for line in lines)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    p = gw("check", env={"GATEWAY_CONFIG": str(tmp_path / "absent.toml")})
    assert p.returncode == 2
    assert "absent.toml" in p.stderr


def test_jwt_route_without_any_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "auth.toml"
    cfg.write_text(GOOD_TOML + 'auth = ["jwt"]\n')
    p = gw("check", env={"GATEWAY_CONFIG": str(cfg)})
    assert p.returncode == 2
    assert "routes[0].auth: jwt needs GATEWAY_JWT_SECRET" in p.stderr
    p = gw("check", env={"GATEWAY_CONFIG": str(cfg), "GATEWAY_JWT_SECRET": "k" * 32})
    assert p.returncode == 0, p.stderr


def test_jwt_mint_prints_a_token_the_gateway_accepts() -> None:
    import jwt

    secret = "mint-secret-0123456789abcdefghijklmnop"
    p = gw("jwt", "mint", "--sub", "u1", "--org", "acme", "--scope", "a b", "--ttl", "60",
           env={"GATEWAY_JWT_SECRET": secret})
    assert p.returncode == 0, p.stderr
    c = jwt.decode(p.stdout.strip(), secret, algorithms=["HS256"])
    assert (c["sub"], c["org"], c["scope"]) == ("u1", "acme", "a b")
    assert 55 <= c["exp"] - c["iat"] <= 60 and isinstance(c["jti"], str)
    p = gw("jwt", "mint", "--sub", "u1")
    assert p.returncode == 2 and "GATEWAY_JWT_SECRET" in p.stderr
    p = gw("jwt", "mint", env={"GATEWAY_JWT_SECRET": secret})
    assert p.returncode == 2 and "--sub" in p.stderr


def test_unknown_command_and_stray_arguments_exit_2() -> None:
    p = gw("serve")
    assert p.returncode == 2 and "unknown command 'serve'" in p.stderr
    p = gw("check", "--verbose")
    assert p.returncode == 2 and "unexpected arguments" in p.stderr


def test_help_exits_0() -> None:
    p = gw("--help")
    assert p.returncode == 0
    assert "usage: gateway [COMMAND]" in p.stdout and "\n  check   gateway check" in p.stdout


def test_check_warns_about_an_unknown_gateway_variable() -> None:
    p = gw("check", env={"GATEWAY_MAX_CONECTIONS": "5"})
    assert p.returncode == 0
    assert "GATEWAY_MAX_CONECTIONS is not a gateway variable" in p.stderr


def test_bad_log_level_exits_2_naming_it() -> None:
    p = gw("check", env={"GATEWAY_LOG_LEVEL": "loud"})
    assert p.returncode == 2
    assert "GATEWAY_LOG_LEVEL" in p.stderr and "loud" in p.stderr


def test_port_in_use_is_one_line_naming_gateway_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        p = gw("run", env={"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                           "GATEWAY_ADMIN_PORT": str(free_port())})
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("gateway: cannot listen on 127.0.0.1:")
    assert "GATEWAY_PORT" in lines[-1]
    assert "Traceback" not in p.stderr


def test_port_in_use_with_workers_is_reported_by_the_supervisor() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        p = gw("run", env={"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_WORKERS": "2",
                           "GATEWAY_ADMIN_PORT": str(free_port())})
    assert p.returncode == 1
    assert "GATEWAY_PORT" in p.stderr and "Traceback" not in p.stderr
