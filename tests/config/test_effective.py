"""What `gateway check --dump` and GET /config show (gateway/config/effective.py): every default
written out, under keys the parser takes, reading back to the same configuration."""
from __future__ import annotations

from typing import Any

from gateway.config import load_settings, loads_config
from gateway.config.effective import effective, to_toml
from gateway.config.keys import parser_keys
from tests.integration.test_cli_ops import FULL_TOML

MINIMAL = '[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:1"]\n[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n'


def _walk(table: str, value: dict[str, Any], accepted: dict[str, set[str]], seen: set[str]) -> list[str]:
    """Keys of `value` (at TOML table path `table`) that its parser would refuse."""
    bad = [f"{table}.{k}" for k in value if k not in accepted[table]]
    seen.add(table)
    for k, v in value.items():
        child = f"{table}.{k}"
        if isinstance(v, dict) and child in accepted:
            bad += _walk(child, v, accepted, seen)
        elif isinstance(v, list) and v and isinstance(v[0], dict) and child + "[]" in accepted:
            for item in v:
                bad += _walk(child + "[]", item, accepted, seen)
    return bad


def test_every_key_shown_is_a_key_the_parser_takes() -> None:
    # Every model field is shown (a field added to the model appears without an edit): each must
    # be a TOML key, or listed as derived in effective._DERIVED.
    accepted = parser_keys()
    doc = effective(load_settings({}), loads_config(FULL_TOML))
    seen: set[str] = set()
    bad: list[str] = []
    for s in doc["services"]:
        bad += _walk("services[]", s, accepted, seen)
    for r in doc["routes"]:
        bad += _walk("routes[]", r, accepted, seen)
    assert bad == []
    assert {"services[]", "services[].targets[]", "services[].health", "services[].breaker", "routes[]",
            "routes[].canary", "routes[].fallback", "routes[].rate_limits[]"} <= seen


def test_the_dump_reads_back_to_the_same_configuration() -> None:
    no_body = MINIMAL + "fallback = { status = 503 }\n"      # content_type is refused without a body
    for text in (FULL_TOML, MINIMAL, no_body):
        original = loads_config(text)
        dumped = to_toml(effective(load_settings({}), original))
        again = loads_config(dumped)
        assert (again.services, again.routes, again.quotas) == (original.services, original.routes, original.quotas)


def test_defaults_are_written_out() -> None:
    dumped = to_toml(effective(load_settings({}), loads_config(MINIMAL)))
    for line in ('balancer = "round_robin"', "weight = 1", "strip_prefix = false", "retries = 0",
                 "websocket = false", "security_headers = false", "# timeout: GATEWAY_UPSTREAM_TIMEOUT",
                 "# methods: every method"):
        assert line in dumped, line


def test_the_environment_part_is_masked() -> None:
    env = {"GATEWAY_ADMIN_TOKEN": "tok-s3cr3t", "GATEWAY_ALERT_SECRET": "alert-s3cr3t",
           "GATEWAY_REDIS_URL": "rediss://:pw-s3cr3t@redis:6380/0"}
    doc = effective(load_settings(env), loads_config(MINIMAL))
    assert "s3cr3t" not in repr(doc)
    assert doc["environment"]["GATEWAY_REDIS_URL"] == "rediss://:***@redis:6380/0"
