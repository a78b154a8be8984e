"""Environment variables (SPEC §2) → Settings: defaults, good values, bad values naming the variable."""
from __future__ import annotations

import dataclasses
import ipaddress
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import VARIABLES, EnvError, Settings, load_settings, unknown_variables
from gateway.config.env import mask_url_password


def test_defaults_match_spec() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.workers, s.config) == ("0.0.0.0", 8080, 1, None)
    assert (s.admin_host, s.admin_port, s.admin_token) == ("127.0.0.1", 9901, None)
    assert s.redis_url is None and s.redis_cluster is False
    assert (s.redis_prefix, s.redis_timeout, s.shm_size) == ("gateway:", 0.05, 64 << 20)
    assert [str(n) for n in s.metrics_allow] == [
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    assert s.trusted_proxies == ()
    assert s.jwt_secret is None and s.jwt_leeway == 30.0 and s.jwt_org_claim == "org"
    assert (s.header_timeout, s.body_timeout, s.keepalive_timeout) == (10.0, 30.0, 75.0)
    assert (s.upstream_connect_timeout, s.upstream_timeout) == (5.0, 30.0)
    assert (s.max_header_bytes, s.max_headers, s.max_uri_bytes) == (16384, 100, 8192)
    assert (s.max_body_bytes, s.max_connections, s.drain_timeout) == (10485760, 10000, 30.0)
    assert (s.access_log, s.audit_log, s.alert_webhooks, s.tracing) == ("off", "stderr", (), False)


def test_direct_construction_has_the_same_defaults() -> None:
    assert Settings() == load_settings({})


def test_every_spec_variable_is_a_field() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    assert {v[len("GATEWAY_"):].lower() for v in VARIABLES} == names
    # SPEC §2 plus GATEWAY_SHM_SIZE, GATEWAY_REUSE_PORT, GATEWAY_RATELIMIT_KEYS/_SURGE, GATEWAY_LOG_LEVEL and the four
    # GATEWAY_[ADMIN_]TLS_CERT/_KEY (README)
    assert len(VARIABLES) == 49


def test_settings_are_immutable_and_slotted() -> None:
    s = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    assert not hasattr(s, "__dict__")


GOOD = [
    ("GATEWAY_HOST", "127.0.0.1", "host", "127.0.0.1"),
    ("GATEWAY_HOST", "::", "host", "::"),
    ("GATEWAY_HOST", "localhost", "host", "localhost"),
    ("GATEWAY_PORT", "1", "port", 1),
    ("GATEWAY_PORT", " 65535 ", "port", 65535),
    ("GATEWAY_WORKERS", "4", "workers", 4),
    ("GATEWAY_WORKERS", "auto", "workers", min(os.cpu_count() or 1, 62)),
    ("GATEWAY_WORKERS", "AUTO", "workers", min(os.cpu_count() or 1, 62)),
    ("GATEWAY_WORKERS", "62", "workers", 62),
    ("GATEWAY_CONFIG", "/etc/gateway.toml", "config", "/etc/gateway.toml"),
    ("GATEWAY_REDIS_CLUSTER", "0", "redis_cluster", False),
    ("GATEWAY_REDIS_URL", "redis://localhost:6379/0", "redis_url", "redis://localhost:6379/0"),
    ("GATEWAY_REDIS_URL", "unix:///run/redis.sock", "redis_url", "unix:///run/redis.sock"),
    ("GATEWAY_REDIS_URL", "rediss://:pw@redis.internal:6380/2", "redis_url", "rediss://:pw@redis.internal:6380/2"),
    ("GATEWAY_REDIS_PREFIX", "gw-prod:", "redis_prefix", "gw-prod:"),
    ("GATEWAY_REDIS_TIMEOUT", "0.2", "redis_timeout", 0.2),
    ("GATEWAY_SHM_SIZE", "128m", "shm_size", 128 << 20),
    ("GATEWAY_SHM_SIZE", "2G", "shm_size", 2 << 30),
    ("GATEWAY_SHM_SIZE", "4194304", "shm_size", 4 << 20),
    ("GATEWAY_ADMIN_HOST", "0.0.0.0", "admin_host", "0.0.0.0"),
    ("GATEWAY_ADMIN_PORT", "9000", "admin_port", 9000),
    ("GATEWAY_ADMIN_TOKEN", "s3cret", "admin_token", "s3cret"),
    ("GATEWAY_JWT_SECRET", "k" * 32, "jwt_secret", "k" * 32),
    ("GATEWAY_HEADER_TIMEOUT", "2.5", "header_timeout", 2.5),
    ("GATEWAY_BODY_TIMEOUT", "1", "body_timeout", 1.0),
    ("GATEWAY_KEEPALIVE_TIMEOUT", "0.5", "keepalive_timeout", 0.5),
    ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "3", "upstream_connect_timeout", 3.0),
    ("GATEWAY_UPSTREAM_TIMEOUT", "60", "upstream_timeout", 60.0),
    ("GATEWAY_MAX_HEADER_BYTES", "8192", "max_header_bytes", 8192),
    ("GATEWAY_MAX_HEADERS", "50", "max_headers", 50),
    ("GATEWAY_MAX_URI_BYTES", "2048", "max_uri_bytes", 2048),
    ("GATEWAY_MAX_BODY_BYTES", "1", "max_body_bytes", 1),
    ("GATEWAY_MAX_CONNECTIONS", "100000", "max_connections", 100000),
    ("GATEWAY_MAX_CONNECTIONS", "1000000", "max_connections", 1000000),
    ("GATEWAY_MAX_BODY_BYTES", str(64 << 30), "max_body_bytes", 64 << 30),
    ("GATEWAY_HEADER_TIMEOUT", "86400", "header_timeout", 86400.0),
    ("GATEWAY_UPSTREAM_TIMEOUT", "1e3", "upstream_timeout", 1000.0),
    ("GATEWAY_DRAIN_TIMEOUT", "0", "drain_timeout", 0.0),
    ("GATEWAY_ACCESS_LOG", "off", "access_log", "off"),
    ("GATEWAY_AUDIT_LOG", "off", "audit_log", "off"),
    ("GATEWAY_AUDIT_LOG", "stderr", "audit_log", "stderr"),
    ("GATEWAY_ALERT_SECRET", "hmac-key", "alert_secret", "hmac-key"),
    ("GATEWAY_TRACING", "off", "tracing", False),
    # empty means unset: an empty admin token must never become a token anybody can present
    ("GATEWAY_ADMIN_TOKEN", "", "admin_token", None),
    ("GATEWAY_PORT", "  ", "port", 8080),
]


@pytest.mark.parametrize(("var", "raw", "field", "expected"), GOOD)
def test_good_values(var: str, raw: str, field: str, expected: object) -> None:
    assert getattr(load_settings({var: raw}), field) == expected


def test_cidr_lists() -> None:
    s = load_settings({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7 ,::1,", "GATEWAY_METRICS_ALLOW": "10.1.2.3/8"})
    assert s.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"),
                                 ipaddress.ip_network("::1/128"))
    assert s.metrics_allow == (ipaddress.ip_network("10.0.0.0/8"),)   # host bits dropped, as nginx allow


BAD = [
    ("GATEWAY_PORT", "abc", "GATEWAY_PORT: expected an integer 1-65535, got 'abc'"),
    ("GATEWAY_PORT", "0", "GATEWAY_PORT: expected an integer 1-65535, got '0'"),
    ("GATEWAY_PORT", "65536", "GATEWAY_PORT: expected an integer 1-65535, got '65536'"),
    ("GATEWAY_PORT", "80.0", "GATEWAY_PORT: expected an integer 1-65535, got '80.0'"),
    ("GATEWAY_PORT", "1_000", "GATEWAY_PORT: expected an integer 1-65535, got '1_000'"),
    ("GATEWAY_ADMIN_PORT", "-1", "GATEWAY_ADMIN_PORT: expected an integer 1-65535, got '-1'"),
    ("GATEWAY_HOST", "not a host", "GATEWAY_HOST: expected an IP address or hostname, got 'not a host'"),
    ("GATEWAY_ADMIN_HOST", "a_b", "GATEWAY_ADMIN_HOST: expected an IP address or hostname, got 'a_b'"),
    ("GATEWAY_WORKERS", "0", "GATEWAY_WORKERS: expected an integer 1-62 or 'auto', got '0'"),
    ("GATEWAY_WORKERS", "63", "GATEWAY_WORKERS: expected an integer 1-62 or 'auto', got '63'"),
    ("GATEWAY_WORKERS", "many", "GATEWAY_WORKERS: expected an integer 1-62 or 'auto', got 'many'"),
    ("GATEWAY_REDIS_CLUSTER", "yes please", "GATEWAY_REDIS_CLUSTER: expected 1 or 0, got 'yes please'"),
    ("GATEWAY_REDIS_CLUSTER", "1", "GATEWAY_REDIS_CLUSTER: needs GATEWAY_REDIS_URL"),
    ("GATEWAY_REDIS_URL", "redis://", "GATEWAY_REDIS_URL: expected a URL redis://... or rediss://... or unix://..., got 'redis://'"),
    ("GATEWAY_REDIS_URL", "redis://h:99999/0", "GATEWAY_REDIS_URL: expected a URL"),
    ("GATEWAY_REDIS_URL", "unix://", "GATEWAY_REDIS_URL: expected a URL"),
    ("GATEWAY_REDIS_PREFIX", "a{b}:", "GATEWAY_REDIS_PREFIX: expected up to 64 printable characters"),
    ("GATEWAY_REDIS_PREFIX", "my prefix", "GATEWAY_REDIS_PREFIX: expected up to 64 printable characters"),
    ("GATEWAY_REDIS_TIMEOUT", "0", "GATEWAY_REDIS_TIMEOUT: expected a number of seconds 0.001-10, got '0'"),
    ("GATEWAY_REDIS_TIMEOUT", "nan", "GATEWAY_REDIS_TIMEOUT: expected a number of seconds 0.001-10, got 'nan'"),
    ("GATEWAY_REDIS_TIMEOUT", "50ms", "GATEWAY_REDIS_TIMEOUT: expected a number of seconds 0.001-10, got '50ms'"),
    ("GATEWAY_SHM_SIZE", "64x", "GATEWAY_SHM_SIZE: expected a size in bytes with an optional k/m/g suffix, 1m-64g, got '64x'"),
    ("GATEWAY_SHM_SIZE", "1k", "GATEWAY_SHM_SIZE: expected a size in bytes"),
    ("GATEWAY_SHM_SIZE", "65g", "GATEWAY_SHM_SIZE: expected a size in bytes"),
    ("GATEWAY_METRICS_ALLOW", "10.0.0.0/33", "GATEWAY_METRICS_ALLOW: expected comma-separated IPs or CIDRs (10.0.0.0/8,::1), got '10.0.0.0/33'"),
    ("GATEWAY_TRUSTED_PROXIES", "proxy.local", "GATEWAY_TRUSTED_PROXIES: expected comma-separated IPs or CIDRs (10.0.0.0/8,::1), got 'proxy.local'"),
    ("GATEWAY_HEADER_TIMEOUT", "0", "GATEWAY_HEADER_TIMEOUT: expected a number of seconds 0.001-86400, got '0'"),
    ("GATEWAY_BODY_TIMEOUT", "-1", "GATEWAY_BODY_TIMEOUT: expected a number of seconds 0.001-86400, got '-1'"),
    ("GATEWAY_KEEPALIVE_TIMEOUT", "inf", "GATEWAY_KEEPALIVE_TIMEOUT: expected a number of seconds 0.001-86400, got 'inf'"),
    ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", "nan", "GATEWAY_UPSTREAM_CONNECT_TIMEOUT: expected a number of seconds 0.001-86400, got 'nan'"),
    ("GATEWAY_UPSTREAM_TIMEOUT", "30s", "GATEWAY_UPSTREAM_TIMEOUT: expected a number of seconds 0.001-86400, got '30s'"),
    ("GATEWAY_DRAIN_TIMEOUT", "-0.5", "GATEWAY_DRAIN_TIMEOUT: expected a number of seconds 0-86400, got '-0.5'"),
    ("GATEWAY_MAX_HEADER_BYTES", "0", "GATEWAY_MAX_HEADER_BYTES: expected an integer 1024-1048576 (1 KiB-1 MiB), got '0'"),
    ("GATEWAY_MAX_HEADERS", "ten", "GATEWAY_MAX_HEADERS: expected an integer 1-10000, got 'ten'"),
    ("GATEWAY_MAX_URI_BYTES", "1e3", "GATEWAY_MAX_URI_BYTES: expected an integer 256-1048576 (256 B-1 MiB), got '1e3'"),
    ("GATEWAY_MAX_BODY_BYTES", "10M", "GATEWAY_MAX_BODY_BYTES: expected an integer 1-68719476736 (1 B-64 GiB), got '10M'"),
    ("GATEWAY_MAX_CONNECTIONS", "-5", "GATEWAY_MAX_CONNECTIONS: expected an integer 1-1000000, got '-5'"),
    ("GATEWAY_ACCESS_LOG", "stdrr", "GATEWAY_ACCESS_LOG: expected off, stdout, stderr or a file path, got 'stdrr'"),
    ("GATEWAY_AUDIT_LOG", "loud", "GATEWAY_AUDIT_LOG: expected off, stdout, stderr or a file path, got 'loud'"),
    ("GATEWAY_TRACING", "maybe", "GATEWAY_TRACING: expected on or off, got 'maybe'"),
    # invalid values of not-yet-built features get the form message (more useful than "not yet")
    ("GATEWAY_REDIS_URL", "http://x", "GATEWAY_REDIS_URL: expected a URL redis://... or rediss://... or unix://..., got 'http://x'"),
    ("GATEWAY_JWT_JWKS_URL", "ftp://x/jwks", "GATEWAY_JWT_JWKS_URL: expected a URL https://... or http://..., got 'ftp://x/jwks'"),
    ("GATEWAY_ALERT_WEBHOOKS", "https://ok.example,nope", "GATEWAY_ALERT_WEBHOOKS: expected a URL https://... or http://..., got 'nope'"),
    ("GATEWAY_JWT_ALGORITHMS", "none", "GATEWAY_JWT_ALGORITHMS: expected a comma-separated list of "),
    ("GATEWAY_JWT_LEEWAY", "-3", "GATEWAY_JWT_LEEWAY: expected a number of seconds 0-3600, got '-3'"),
]


@pytest.mark.parametrize(("var", "raw", "message"), BAD)
def test_bad_values_name_the_variable_and_form(var: str, raw: str, message: str) -> None:
    with pytest.raises(EnvError) as info:
        load_settings({var: raw})
    assert info.value.var == var
    assert str(info.value).startswith(message)
    assert len(info.value.errors) == 1


def test_all_problems_are_collected_in_variable_order() -> None:
    env = {"GATEWAY_MAX_HEADERS": "0", "GATEWAY_PORT": "abc", "GATEWAY_REDIS_CLUSTER": "maybe", "GATEWAY_HOST": "127.0.0.1"}
    with pytest.raises(EnvError) as info:
        load_settings(env)
    err = info.value
    assert [e.var for e in err.errors] == ["GATEWAY_PORT", "GATEWAY_REDIS_CLUSTER", "GATEWAY_MAX_HEADERS"]
    assert err.var == "GATEWAY_PORT"
    assert str(err).splitlines() == err.problems
    assert len(err.problems) == 3


def test_masked_hides_every_secret() -> None:
    env = {"GATEWAY_ADMIN_TOKEN": "admintok", "GATEWAY_JWT_SECRET": "jwtsecretvalue-0123456789abcdefghij",
           "GATEWAY_ALERT_SECRET": "alertkey"}
    s = load_settings(env)
    shown = s.masked()
    assert set(shown) == set(VARIABLES)
    text = repr(shown) + repr(s) + str(s)
    for secret in env.values():
        assert secret not in text
    assert shown["GATEWAY_ADMIN_TOKEN"] == "<set, hidden>"
    assert shown["GATEWAY_PORT"] == "8080"
    assert load_settings({}).masked()["GATEWAY_JWT_SECRET"] == "<unset>"


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:pw@host/0", "rediss://:***@host/0"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redis_url_password_is_masked(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown
    # the masking used by masked() for a Settings that holds a Redis URL (built directly, since
    # load_settings refuses the variable until the Redis store exists)
    assert Settings(redis_url=url).masked()["GATEWAY_REDIS_URL"] == shown


def test_unknown_gateway_variables_are_listed_for_a_warning() -> None:
    env = {"GATEWAY_PROT": "1", "GATEWAY_PORT": "1", "PATH": "/bin"}
    assert unknown_variables(env) == ["GATEWAY_PROT"]
    load_settings(env)  # not an error: build tooling shares the prefix


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(VARIABLES), st.text(max_size=30), max_size=6))
def test_any_environment_gives_settings_or_env_error(env: dict[str, str]) -> None:
    # Whatever an operator types, the result is Settings or an EnvError naming the variable: never
    # a traceback from a parser (urlsplit, ipaddress, float ...).
    try:
        load_settings(env)
    except EnvError as exc:
        assert all(e.var in env for e in exc.errors)


def test_loader_sees_odd_urls_as_bad_values() -> None:
    with pytest.raises(EnvError) as info:
        load_settings({"GATEWAY_JWT_JWKS_URL": "http://[", "GATEWAY_REDIS_URL": "redis://h:99999"})
    assert [e.var for e in info.value.errors] == ["GATEWAY_REDIS_URL", "GATEWAY_JWT_JWKS_URL"]
    assert all("expected a URL" in e.message for e in info.value.errors)


# Data and admin listeners on one address: `check` passed, and with GATEWAY_WORKERS=2 `run` left a
# supervisor whose workers could never bind (the admin listener held the port): zero workers.
SAME_ADDRESS = [
    {"GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},                      # 0.0.0.0 vs 127.0.0.1
    {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "10.1.2.3", "GATEWAY_ADMIN_HOST": "0.0.0.0", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "::", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "::1", "GATEWAY_ADMIN_HOST": "::", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "::1", "GATEWAY_ADMIN_HOST": "0:0::1", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "localhost", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},   # a name may be any address
    {"GATEWAY_PORT": "9901"},                                                     # the admin default port
    {"GATEWAY_ADMIN_PORT": "8080"},                                               # the data default port
]


@pytest.mark.parametrize("env", SAME_ADDRESS)
def test_data_and_admin_on_one_address_are_refused_naming_both(env: dict[str, str]) -> None:
    with pytest.raises(EnvError) as info:
        load_settings(env)
    (line,) = info.value.problems
    assert "GATEWAY_PORT" in line and "GATEWAY_ADMIN_PORT" in line, line
    assert "GATEWAY_HOST" in line and "GATEWAY_ADMIN_HOST" in line, line


@pytest.mark.parametrize("env", [
    {"GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9001"},
    {"GATEWAY_HOST": "127.0.0.2", "GATEWAY_ADMIN_HOST": "127.0.0.1", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
    {"GATEWAY_HOST": "10.0.0.1", "GATEWAY_ADMIN_HOST": "::1", "GATEWAY_PORT": "9000", "GATEWAY_ADMIN_PORT": "9000"},
])
def test_distinct_listeners_are_accepted(env: dict[str, str]) -> None:
    load_settings(env)


def test_a_bad_port_is_reported_once_not_also_as_a_clash() -> None:
    with pytest.raises(EnvError) as info:
        load_settings({"GATEWAY_PORT": "x", "GATEWAY_ADMIN_PORT": "9000"})
    assert [e.var for e in info.value.errors] == ["GATEWAY_PORT"]


def test_the_clash_is_reported_under_a_variable_that_was_set() -> None:
    for env in ({"GATEWAY_PORT": "9901"}, {"GATEWAY_ADMIN_PORT": "8080"}):
        with pytest.raises(EnvError) as info:
            load_settings(env)
        assert info.value.var in env
