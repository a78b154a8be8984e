"""[services.breaker] and a route's `fallback` (SPEC §3): accepted values and every refusal with its path."""
from __future__ import annotations

import pytest

from gateway.config import ConfigErrors
from gateway.config.model import BreakerConfig, FallbackConfig
from gateway.config.schema import loads_config

SVC = '[[services]]\nname = "users"\ntargets = [{ url = "http://127.0.0.1:9001" }]\n'
ROUTE = '[[routes]]\nname = "r"\npath = "/api"\nservice = "users"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads_config(text)
    return info.value.problems


def breaker(body: str) -> BreakerConfig | None:
    return loads_config(SVC + "[services.breaker]\n" + body).services[0].breaker


def test_an_empty_table_takes_the_spec_defaults() -> None:
    assert breaker("") == BreakerConfig()
    assert BreakerConfig().failure_statuses is None          # every 5xx


def test_every_key_is_read() -> None:
    got = breaker("failure_threshold = 2\nerror_rate = 0.25\nmin_requests = 7\nwindow = 3.5\n"
                  "open_timeout = 0.5\nhalf_open_requests = 4\nsuccess_threshold = 2\n"
                  "failure_statuses = [503, 502, 503]\n")
    assert got == BreakerConfig(2, 0.25, 7, 3.5, 0.5, 4, 2, (502, 503))


def test_success_threshold_defaults_to_at_most_the_probes() -> None:
    assert breaker("half_open_requests = 1\n").success_threshold == 1       # type: ignore[union-attr]
    assert breaker("half_open_requests = 5\n").success_threshold == 3       # type: ignore[union-attr]


@pytest.mark.parametrize(("body", "problem"), [
    ("failure_threshold = 0\n", "services[0].breaker.failure_threshold: expected an integer 1-1000000, got 0"),
    ("error_rate = 0\n", "services[0].breaker.error_rate: expected a fraction in (0, 1]"),
    ("error_rate = 0.0\n", "services[0].breaker.error_rate: expected a fraction in (0, 1]"),
    ("error_rate = 1.01\n", "services[0].breaker.error_rate: expected a number 0-1, got 1.01"),
    ("error_rate = -0.5\n", "services[0].breaker.error_rate: expected a number 0-1, got -0.5"),
    ("success_threshold = 4\n", "services[0].breaker.success_threshold: expected at most half_open_requests (3)"),
    ("half_open_requests = 2\nsuccess_threshold = 3\n",
     "services[0].breaker.success_threshold: expected at most half_open_requests (2)"),
    ("half_open_requests = 0\n", "services[0].breaker.half_open_requests: expected an integer 1-1000000, got 0"),
    ("min_requests = 0\n", "services[0].breaker.min_requests: expected an integer 1-1000000, got 0"),
    ("window = 0\n", "services[0].breaker.window: expected a number of seconds 0.001-86400, got 0"),
    ("open_timeout = nan\n", "services[0].breaker.open_timeout: expected a number of seconds 0.001-86400, got nan"),
    ("failure_statuses = [600]\n", "services[0].breaker.failure_statuses[0]: expected an integer 100-599, got 600"),
    ("failure_statuses = 500\n", "services[0].breaker.failure_statuses: expected an array of HTTP status codes"),
    ("failure_threshold = 1.5\n", "services[0].breaker.failure_threshold: expected an integer 1-1000000, got a number"),
    ("threshold = 1\n", "services[0].breaker.threshold: unknown key"),
])
def test_bad_breaker_values_name_their_path(body: str, problem: str) -> None:
    assert any(p.startswith(problem) for p in problems(SVC + "[services.breaker]\n" + body)), problems(
        SVC + "[services.breaker]\n" + body)


def test_breaker_must_be_a_table() -> None:
    assert problems(SVC.replace("targets", 'breaker = 3\ntargets')) == [
        "services[0].breaker: expected a table ([services.breaker]), got an integer"]


def fallback(value: str) -> FallbackConfig | None:
    return loads_config(SVC + ROUTE + f"fallback = {value}\n").routes[0].fallback


def test_fallbacks_are_read() -> None:
    assert fallback("{}") == FallbackConfig()
    assert fallback("{ status = 200 }") == FallbackConfig(status=200)
    assert fallback('{ status = 503, body = \'{"error":"users_unavailable"}\', content_type = "application/json" }') == \
        FallbackConfig(503, b'{"error":"users_unavailable"}', "application/json")
    assert fallback('{ body = "sorry", content_type = "text/plain; charset=utf-8" }') == \
        FallbackConfig(503, b"sorry", "text/plain; charset=utf-8")
    assert loads_config(SVC + ROUTE).routes[0].fallback is None


@pytest.mark.parametrize(("value", "problem"), [
    ("{ status = 100 }", "routes[0].fallback.status: expected an integer 200-599, got 100"),
    ("{ status = 204 }", "routes[0].fallback.status: expected a status that carries a body, got 204"),
    ("{ status = 304 }", "routes[0].fallback.status: expected a status that carries a body, got 304"),
    ('{ body = 3 }', "routes[0].fallback.body: expected a string, got an integer"),
    ('{ body = "x", content_type = "text/plain\\r\\nX-Evil: 1" }', "routes[0].fallback.content_type: expected a media type"),
    ('{ body = "x", content_type = "plain" }', "routes[0].fallback.content_type: expected a media type"),
    ('{ content_type = "text/plain" }', "routes[0].fallback.content_type: only with a body"),
    ('{ headers = 1 }', "routes[0].fallback.headers: unknown key"),
    ("503", "routes[0].fallback: expected a table"),
])
def test_bad_fallbacks_name_their_path(value: str, problem: str) -> None:
    got = problems(SVC + ROUTE + f"fallback = {value}\n")
    assert any(p.startswith(problem) for p in got), got


def test_a_fallback_body_is_bounded() -> None:
    got = problems(SVC + ROUTE + f'fallback = {{ body = "{"x" * (64 * 1024 + 1)}" }}\n')
    assert got == ["routes[0].fallback.body: expected at most 65536 bytes, got 65537"]
