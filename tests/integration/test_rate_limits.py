"""Rate limits and quotas through real gateway processes: exact per node across 2 workers, the
429 on the wire (Retry-After, SPEC §4 JSON, RateLimit-* on every response), identity-keyed
quotas through the test identity hook, and bad policies refused at start (exit 2)."""
from __future__ import annotations

import http.client
import json

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    socket_owner,
    upstream,
    wait_until,
    worker_pids,
)


def _config(upstream_url: str, limits: str, quotas: str = "") -> str:
    return (f'[[services]]\nname = "up"\ntargets = [{{ url = "{upstream_url}" }}]\n'
            f'[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n{limits}\n{quotas}')


def _two_workers(gw) -> list[int]:
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    assert isinstance(pids, list)
    return pids


def _get(port: int, headers: dict[str, str] | None = None,
         pids: list[int] | None = None) -> tuple[int, dict[str, str], bytes, int]:
    """One request on a fresh connection (so requests spread over the workers); with `pids`,
    also which of them served it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/x", headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        owner = socket_owner(port, conn.sock.getsockname()[1], pids) if pids else 0
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, owner or 0
    finally:
        conn.close()


def test_a_limit_is_exact_per_node_across_two_workers(gateway, upstream) -> None:  # noqa: F811
    # A window of an hour: the test never crosses a boundary, so "at most limit" is "exactly".
    gw = gateway(_config(upstream.url, '[[routes.rate_limits]]\nkey = "ip"\nlimit = 40\nwindow = 3600.0\n'),
                 env={"GATEWAY_WORKERS": "2"})
    pids = _two_workers(gw)
    statuses: list[int] = []
    owners: set[int] = set()
    for _ in range(100):
        status, headers, body, owner = _get(gw.port, pids=pids)
        statuses.append(status)
        owners.add(owner)
        assert headers["ratelimit-limit"] == "40"
        assert int(headers["ratelimit-remaining"]) == max(0, 40 - statuses.count(200))
        if status == 429:
            assert int(headers["retry-after"]) >= 1
            assert headers["content-type"] == "application/json"
            doc = json.loads(body)
            assert doc["error"] == "rate_limited" and doc["request_id"] == headers["x-request-id"]
    assert statuses.count(200) == 40 and statuses.count(429) == 60
    assert owners >= set(pids), owners          # both workers answered: one count per node
    assert gw.stop() == 0


def test_hierarchical_quotas_with_identities_across_workers(gateway, upstream) -> None:  # noqa: F811
    quotas = ('[quotas]\ndefault_user = { limit = 3, window = 3600.0 }\n'
              '[quotas.orgs.acme]\nlimit = 5\nwindow = 3600.0\n')
    gw = gateway(_config(upstream.url, "", quotas),
                 env={"GATEWAY_WORKERS": "2", "_GATEWAY_TEST_IDENTITY": "1"})
    _two_workers(gw)

    def as_(user: str) -> int:
        return _get(gw.port, {"X-Test-User": user, "X-Test-Org": "acme"})[0]

    assert [as_("alice") for _ in range(4)] == [200, 200, 200, 429]      # alice's 3
    assert [as_("bob") for _ in range(3)] == [200, 200, 429]             # the org's 5 in all
    status, headers, body, _ = _get(gw.port, {"X-Test-User": "carol", "X-Test-Org": "acme"})
    assert status == 429 and json.loads(body)["error"] == "quota_exceeded"
    # Anonymous traffic is not under quotas.
    assert all(_get(gw.port)[0] == 200 for _ in range(5))
    assert gw.stop() == 0


def test_unlimited_routes_carry_no_ratelimit_headers(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(_config(upstream.url, ""))
    status, headers, _ = http_get(gw.port, "/x")
    assert status == 200 and "ratelimit-limit" not in headers
    assert gw.stop() == 0


def test_a_bad_policy_exits_2_naming_its_path(tmp_path) -> None:
    from tests.integration.test_config_faults import assert_refused, run_gateway

    bad = ('[[services]]\nname = "up"\ntargets = ["http://127.0.0.1:9"]\n'
           '[[routes]]\nname = "api"\npath = "/"\nservice = "up"\n'
           '[[routes.rate_limits]]\nkey = "ip"\nlimit = 5\nwindow = 1.0\nburst = 2\n')
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    assert_refused(run_gateway("run", env={"GATEWAY_CONFIG": str(path)}), "routes[0].rate_limits[0].burst")
