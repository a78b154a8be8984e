"""[[routes.rate_limits]] and [quotas] (SPEC §3): what is accepted, and every refusal names its path."""
from __future__ import annotations

import pytest

from gateway.config import ConfigErrors, loads_config
from gateway.config.model import QuotaLimit, RateLimitConfig
from tests.config.test_toml_schema import ROUTE, SVC


def problems(text: str) -> list[str]:
    try:
        loads_config(text)
    except ConfigErrors as exc:
        return exc.problems
    return []


def test_policies_and_quotas_are_parsed() -> None:
    cfg = loads_config(SVC + ROUTE + '''
[[routes.rate_limits]]
key = "user"
limit = 100
window = 1.0
[[routes.rate_limits]]
key = "header:X-Tenant"
limit = 10
window = 0.5
algorithm = "token_bucket"
burst = 20
[quotas]
default_user = { limit = 1000, window = 60.0 }
default_org = { limit = 10000, window = 60.0 }
[quotas.orgs.acme]
limit = 50000
window = 60.0
user_limit = 2000
[quotas.users.alice]
limit = 5000
window = 60.0
''')
    assert cfg.routes[0].rate_limits == (
        RateLimitConfig("user", 100, 1.0), RateLimitConfig("header:x-tenant", 10, 0.5, "token_bucket", 20))
    q = cfg.quotas
    assert q is not None
    assert q.default_user == QuotaLimit(1000, 60.0) and q.default_org == QuotaLimit(10000, 60.0)
    assert q.orgs == {"acme": QuotaLimit(50000, 60.0, 2000)} and q.users == {"alice": QuotaLimit(5000, 60.0)}


POLICY = SVC + ROUTE + '[[routes.rate_limits]]\n'


@pytest.mark.parametrize(("body", "problem"), [
    ('key = "ip"\nlimit = 0\nwindow = 1.0\n', "routes[0].rate_limits[0].limit: expected an integer 1-1000000000, got 0"),
    ('key = "ip"\nlimit = -5\nwindow = 1.0\n', "routes[0].rate_limits[0].limit: expected an integer"),
    ('key = "ip"\nlimit = 1.5\nwindow = 1.0\n', "routes[0].rate_limits[0].limit: expected an integer"),
    ('key = "ip"\nlimit = 5\nwindow = 0\n', "routes[0].rate_limits[0].window: expected a number of seconds"),
    ('key = "ip"\nlimit = 5\nwindow = -1.0\n', "routes[0].rate_limits[0].window: expected a number of seconds"),
    ('key = "cookie"\nlimit = 5\nwindow = 1.0\n', "routes[0].rate_limits[0].key: expected one of ip, user, org, api_key, route or header:NAME, got 'cookie'"),
    ('key = "header:"\nlimit = 5\nwindow = 1.0\n', "routes[0].rate_limits[0].key: expected one of"),
    ('key = "ip"\nlimit = 5\nwindow = 1.0\nalgorithm = "leaky"\n', "routes[0].rate_limits[0].algorithm: expected one of sliding_window, token_bucket, got 'leaky'"),
    ('key = "ip"\nlimit = 5\nwindow = 1.0\nburst = 3\n', "routes[0].rate_limits[0].burst: only for algorithm"),
    ('key = "ip"\nlimit = 5\nwindow = 1.0\nalgorithm = "sliding_window"\nburst = 3\n', "routes[0].rate_limits[0].burst: only for algorithm"),
    ('key = "ip"\nlimit = 5\nwindow = 1.0\nalgorithm = "token_bucket"\nburst = -1\n', "routes[0].rate_limits[0].burst: expected an integer"),
    ('limit = 5\nwindow = 1.0\n', "routes[0].rate_limits[0].key: required"),
    ('key = "ip"\nwindow = 1.0\n', "routes[0].rate_limits[0].limit: required"),
    ('key = "ip"\nlimit = 5\n', "routes[0].rate_limits[0].window: required"),
    ('key = "ip"\nlimit = 5\nwindow = 1.0\nlimt = 3\n', "routes[0].rate_limits[0].limt: unknown key"),
])
def test_bad_policies_name_their_path(body: str, problem: str) -> None:
    got = problems(POLICY + body)
    assert any(p.startswith(problem) for p in got), got


@pytest.mark.parametrize(("text", "problem"), [
    ("[quotas]\ndefault_user = { limit = 0, window = 1.0 }\n", "quotas.default_user.limit: expected an integer"),
    ("[quotas]\ndefault_org = { limit = 5 }\n", "quotas.default_org.window: required"),
    ("[quotas]\ndefault_org = { limit = 5, window = 1.0, user_limit = 3 }\n", "quotas.default_org.user_limit: unknown key"),
    ("[quotas.orgs.acme]\nlimit = 5\nwindow = 0\n", "quotas.orgs.acme.window: expected a number of seconds"),
    ("[quotas.orgs.acme]\nlimit = 5\nwindow = 1.0\nuser_limit = 0\n", "quotas.orgs.acme.user_limit: expected an integer"),
    ("[quotas.users.alice]\nlimit = 5\nwindow = 1.0\nuser_limit = 3\n", "quotas.users.alice.user_limit: unknown key"),
    ('[quotas.users."bad id"]\nlimit = 5\nwindow = 1.0\n', "quotas.users.bad id: expected an id"),
    ("[quotas]\nmonthly = { limit = 5, window = 1.0 }\n", "quotas.monthly: unknown key"),
])
def test_bad_quotas_name_their_path(text: str, problem: str) -> None:
    got = problems(SVC + text)
    assert any(p.startswith(problem) for p in got), got
