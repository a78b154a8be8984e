"""`gateway demo`: the bundled demo config served with an in-process demo upstream.

No files and no Redis needed: the demo upstream listens on a free loopback port on the gateway's
own loop, demo.toml is filled in with that address and written to a temporary file (so SIGHUP
reload works as in `gateway run`), and ready-to-paste curl lines are printed to stdout. Logs stay
on stderr. GATEWAY_CONFIG and GATEWAY_WORKERS are ignored: the demo is one process by design (its
upstream lives in it).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import sys
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.worker import Worker

log = logging.getLogger("gateway.demo")

PLACEHOLDER = "__DEMO_UPSTREAM__"


def demo_config_text(upstream: str) -> str:
    text = (files("gateway.demo") / "demo.toml").read_text(encoding="utf-8")
    return text.replace(PLACEHOLDER, upstream)


def _client_host(host: str) -> str:
    """Where a local curl should connect for a listener bound to `host`."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def curl_lines(settings: Settings, token: str | None = None, key: str | None = None) -> list[str]:
    """The commands printed by `gateway demo`; every one of them works against the demo."""
    base = f"http://{_client_host(settings.host)}:{settings.port}"
    admin = f"http://{_client_host(settings.admin_host)}:{settings.admin_port}"
    order = '{"user_id": 1, "item": "difference engine", "quantity": 2}'
    return [
        "# the demo users and one of them, through the gateway",
        f"curl -s {base}/users",
        f"curl -s {base}/users/2",
        "# orders: list them, create one",
        f"curl -s {base}/orders",
        f"curl -s -X POST {base}/orders -H 'Content-Type: application/json' -d '{order}'",
        "# what the upstream received (X-Forwarded-*, X-Request-Id, traceparent added by the gateway)",
        f"curl -s '{base}/echo?hello=world'",
        "# /api/* is forwarded with the /api prefix stripped",
        f"curl -s {base}/api/users/1",
        "# answers of the gateway itself: no route (404), method not allowed (405 with Allow)",
        f"curl -s -i {base}/nowhere",
        f"curl -s -i -X DELETE {base}/users",
        "# the admin listener",
        f"curl -s {admin}/health",
        f"curl -s {admin}/openapi.json",
        *(_auth_lines(base, token, key) if token and key else []),
    ]


def _auth_lines(base: str, token: str, key: str) -> list[str]:
    return [
        "# /secure/* needs a credential with the demo:read scope: none is a 401",
        f"curl -s -i {base}/secure/users",
        "# a JWT minted for this demo (sub demo-user, scope demo:read; `gateway jwt mint` makes more)",
        f"curl -s -H 'Authorization: Bearer {token}' {base}/secure/users/1",
        "# an API key created for this demo (shown once; `gateway apikey create` makes more)",
        f"curl -s -H 'X-API-Key: {key}' {base}/secure/users/2",
        "# the API key exchanged for an access token and a refresh token",
        f"curl -s -X POST -H 'X-API-Key: {key}' {base}/auth/token",
    ]


def demo_settings(settings: Settings) -> Settings:
    """The demo signs its own tokens: a random HS256 secret unless GATEWAY_JWT_SECRET is set."""
    import secrets

    if settings.jwt_secret:
        return settings
    return dataclasses.replace(settings, jwt_secret=secrets.token_urlsafe(32), jwt_algorithms=None)


async def demo_credentials(settings: Settings, worker: Worker) -> tuple[str, str]:
    """(a JWT, an API key) for the demo route: the key is written to the node's state like an
    admin POST /keys would."""
    from gateway.security import apikeys
    from gateway.security.commands import mint_token

    token = mint_token(settings, "demo-user", "demo-org", "demo:read", 24 * 3600.0)
    key, record = apikeys.new_key("demo", "demo-user", "demo-org", ["demo:read"], None)
    assert worker.state is not None and worker.state.control is not None
    await worker.state.control.put(apikeys.PREFIX + record["id"], record)
    return token, key


async def run_demo(settings: Settings) -> int:
    import asyncio

    from gateway.config import load_config
    from gateway.demo.upstream import start_demo_upstream
    from gateway.worker import run_worker

    loop = asyncio.get_running_loop()
    upstream = await start_demo_upstream(loop)
    host, port = upstream.sockets[0].getsockname()[:2]  # type: ignore[attr-defined]
    tmpdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        path = tmpdir / "demo.toml"
        path.write_text(demo_config_text(f"{host}:{port}"), encoding="utf-8")
        if settings.config:
            log.info("demo: GATEWAY_CONFIG=%s is ignored, the bundled demo config is served", settings.config)
        settings = demo_settings(dataclasses.replace(settings, config=str(path), workers=1))
        config = load_config(str(path))

        async def announce_later(worker: Worker) -> None:
            token, key = await demo_credentials(settings, worker)
            lines: list[Any] = [
                f"gateway demo: serving on http://{_client_host(settings.host)}:{settings.port} "
                f"(demo upstream on {host}:{port}); Ctrl-C stops it. Try:",
                "",
                *curl_lines(settings, token, key),
                "",
            ]
            sys.stdout.write("\n".join(lines) + "\n")
            sys.stdout.flush()

        def announce(worker: Worker) -> None:
            worker.loop.create_task(announce_later(worker))

        return await run_worker(settings, config, config_path=str(path), admin=True, reuse_port=False,
                                on_listening=announce)
    finally:
        upstream.close()
        shutil.rmtree(tmpdir, ignore_errors=True)
