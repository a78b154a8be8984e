"""TOML (SPEC §3) → GatewayConfig: good configs, every error with its exact path, unbuilt features."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigErrors, GatewayConfig, load_config, loads_config, parse_config

SVC = '[[services]]\nname = "users"\ntargets = [{ url = "http://127.0.0.1:9001" }]\n'
ROUTE = '[[routes]]\nname = "r"\npath = "/api"\nservice = "users"\n'


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        loads_config(text)
    return info.value.problems


def test_full_supported_config() -> None:
    cfg = loads_config('''
[[services]]
name = "users"
balancer = "round_robin"
targets = [
  { url = "http://127.0.0.1:9001", weight = 1, version = "v1" },
  { url = "http://Users.Internal:9002/", version = "v2" },
  "http://[::1]:9003",
  "http://backend",
]
[[routes]]
name = "users-api"
path = "/api/users"
methods = ["get", "POST", "GET"]
host = "API.Example.com."
service = "users"
strip_prefix = true
auth = []
scopes = []
rate_limits = []
retries = 0
websocket = false
timeout = 5
[[routes]]
name = "health"
path = "=/health"
service = "users"
''')
    (svc,) = cfg.services
    assert [(t.host, t.port, t.version, t.id) for t in svc.targets] == [
        ("127.0.0.1", 9001, "v1", "127.0.0.1:9001"),
        ("users.internal", 9002, "v2", "users.internal:9002"),
        ("::1", 9003, None, "[::1]:9003"),
        ("backend", 80, None, "backend:80"),
    ]
    r0, r1 = cfg.routes
    assert (r0.path, r0.exact, r0.methods, r0.host, r0.strip_prefix, r0.timeout) == (
        "/api/users", False, ("GET", "POST"), "api.example.com", True, 5.0)
    assert (r1.path, r1.exact, r1.methods, r1.host, r1.index) == ("/health", True, None, None, 1)
    assert cfg.service("users") is svc


def test_no_file_is_an_empty_config() -> None:
    assert load_config(None) == GatewayConfig()


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\r\n  "], ids=["empty", "newline", "whitespace"])
def test_an_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    # An empty file served no routes at all; a reload that read a file while an editor rewrote it
    # in place (truncate, then write) applied that emptiness. Unset GATEWAY_CONFIG to run without one.
    f = tmp_path / "empty.toml"
    f.write_text(text)
    with pytest.raises(ConfigErrors) as info:
        load_config(str(f))
    assert info.value.problems == [f"{f}: the file is empty (a configuration has [[services]] and [[routes]])"]
    with pytest.raises(ConfigErrors):   # the supervisor's snapshot reads the text itself
        loads_config(text, str(f))


def test_a_file_without_routes_loads_with_a_warning_naming_it(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "noroutes.toml"
    f.write_text("# routes come later\n" + SVC)
    with caplog.at_level("WARNING", logger="gateway.config"):
        cfg = load_config(str(f))
    assert cfg.routes == () and len(cfg.services) == 1
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"{f} has no [[routes]]: every request will answer 404")]
    caplog.clear()
    with caplog.at_level("WARNING", logger="gateway.config"):
        load_config(None)                       # no file: no routes asked for, nothing to warn about
        f.write_text(SVC + ROUTE)
        load_config(str(f))
    assert caplog.records == []


def test_a_worker_booting_from_the_supervisor_snapshot_does_not_warn_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command that started the supervisor warned already, naming the operator's file; N workers
    # repeating it about a private snapshot path would be N lines for one event.
    from gateway.process import BOOT_CONFIG_ENV

    snap = tmp_path / "config.toml"
    snap.write_text(SVC)
    monkeypatch.setenv(BOOT_CONFIG_ENV, str(snap))
    with caplog.at_level("WARNING", logger="gateway.config"):
        load_config(str(snap))
    assert caplog.records == []


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigErrors) as info:
        load_config(str(missing))
    assert info.value.problems[0].startswith(f"{missing}: cannot read")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[routes]\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(str(bad))
    assert info.value.problems[0].startswith(f"{bad}: invalid TOML")


ERRORS = [
    # unknown keys, at every level
    ("limit = 3\n", "limit: unknown key"),
    (SVC + ROUTE + "limt = 5\n", "routes[0].limt: unknown key"),
    (SVC + "colour = 1\n" + ROUTE, "services[0].colour: unknown key"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://h:1", wieght = 2 }]\n', "services[0].targets[0].wieght: unknown key"),
    # bad values
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1" }, { url = "ftp://x" }]\n',
     "services[0].targets[1].url: expected http://host:port or https://host:port, got 'ftp://x'"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "https://a:1/x" }]\n',
     "services[0].targets[0].url: expected http://host:port or https://host:port, got 'https://a:1/x'"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1/base" }]\n', "services[0].targets[0].url: expected http://host:port or https://host:port, got 'http://a:1/base'"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:70000" }]\n', "services[0].targets[0].url: expected http://host:port or https://host:port with a port 1-65535, got 'http://a:70000'"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://user:pw@a:1" }]\n', "services[0].targets[0].url: expected http://host:port or https://host:port, got 'http://user:pw@a:1'"),
    ('[[services]]\nname = "s"\ntargets = [{ url = 5 }]\n', "services[0].targets[0].url: expected http://host:port or https://host:port, got an integer"),
    ('[[services]]\nname = "s"\ntargets = [{ weight = 1 }]\n', "services[0].targets[0].url: required"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1", weight = 0 }]\n', "services[0].targets[0].weight: expected an integer 1-65535, got 0"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1", weight = true }]\n', "services[0].targets[0].weight: expected an integer 1-65535, got a boolean"),
    ('[[services]]\nname = "s"\ntargets = [{ url = "http://a:1", version = 2 }]\n', "services[0].targets[0].version: expected a string, got an integer"),
    ('[[services]]\nname = "s"\ntargets = []\n', "services[0].targets: expected at least one target"),
    ('[[services]]\nname = "s"\n', "services[0].targets: required (at least one target)"),
    ('[[services]]\ntargets = ["http://a:1"]\n', "services[0].name: required"),
    ('[[services]]\nname = "has space"\ntargets = ["http://a:1"]\n', "services[0].name: expected a name of letters, digits, '.', '_' or '-' (max 128), got 'has space'"),
    ('[[services]]\nname = "s"\nbalancer = "random"\ntargets = ["http://a:1"]\n', "services[0].balancer: expected one of round_robin, weighted, least_conn, ip_hash, consistent_hash, p2c_ewma; got 'random'"),
    ('services = 3\n', "services: expected an array of tables ([[services]]), got an integer"),
    (SVC + '[[routes]]\nname = "r"\npath = "api"\nservice = "users"\n', "routes[0].path: expected a path starting with '/' (or '=/' for an exact match), got 'api'"),
    (SVC + '[[routes]]\nname = "r"\npath = "/a b"\nservice = "users"\n', "routes[0].path: expected URL path characters only (no spaces, '?' or '#'), got '/a b'"),
    (SVC + '[[routes]]\nname = "r"\npath = "/a?x=1"\nservice = "users"\n', "routes[0].path: expected URL path characters only (no spaces, '?' or '#'), got '/a?x=1'"),
    (SVC + '[[routes]]\nname = "r"\npath = "/a/../b"\nservice = "users"\n', "routes[0].path: expected a path without '.' or '..' segments, got '/a/../b'"),
    (SVC + '[[routes]]\nname = "r"\nservice = "users"\n', "routes[0].path: required"),
    (SVC + '[[routes]]\nname = "r"\npath = 1\nservice = "users"\n', "routes[0].path: expected a string, got an integer"),
    (SVC + ROUTE + 'methods = []\n', "routes[0].methods: expected a non-empty array of methods (omit the key for every method)"),
    (SVC + ROUTE + 'methods = "GET"\n', "routes[0].methods: expected a non-empty array of methods (omit the key for every method)"),
    (SVC + ROUTE + 'methods = ["GET", "BAD METHOD"]\n', "routes[0].methods[1]: expected an HTTP method token, got 'BAD METHOD'"),
    (SVC + ROUTE + 'host = "api.example.com:8080"\n', "routes[0].host: expected a hostname without port (api.example.com), got 'api.example.com:8080'"),
    (SVC + ROUTE + 'host = "bad_host!"\n', "routes[0].host: expected a hostname without port (api.example.com), got 'bad_host!'"),
    (SVC + ROUTE + 'strip_prefix = "yes"\n', "routes[0].strip_prefix: expected true or false, got a string"),
    (SVC + ROUTE + 'timeout = 0\n', "routes[0].timeout: expected a number of seconds 0.001-86400, got 0"),
    (SVC + ROUTE + 'timeout = "5s"\n', "routes[0].timeout: expected a number of seconds 0.001-86400, got a string"),
    (SVC + ROUTE + 'retries = -1\n', "routes[0].retries: expected an integer 0-100, got -1"),
    # cross-checks
    (SVC + '[[routes]]\nname = "r"\npath = "/"\nservice = "orders"\n', "routes[0].service: unknown service 'orders'"),
    (SVC + '[[routes]]\nname = "r"\npath = "/"\n', "routes[0].service: required"),
    (SVC + SVC, "services[1].name: duplicate service name 'users' (also services[0])"),
    (SVC + ROUTE + '[[routes]]\nname = "r"\npath = "/b"\nservice = "users"\n', "routes[1].name: duplicate route name 'r' (also routes[0])"),
    ('[[services]]\nname = "s"\ntargets = ["http://a:1", "http://A:1/"]\n', "services[0].targets[1].url: duplicate target a:1 (also targets[0])"),
    (SVC + ROUTE + '[[routes]]\nname = "r2"\npath = "/api"\nmethods = ["GET"]\nservice = "users"\n',
     "routes[1]: never matched: routes[0] has the same host and path and takes all its methods"),
]


@pytest.mark.parametrize(("text", "problem"), ERRORS)
def test_each_error_has_its_path(text: str, problem: str) -> None:
    assert problem in problems(text)


def test_auth_that_is_not_a_list_is_refused() -> None:
    # `auth = "jwt"` (a string instead of a list) must not slip through as "no auth"
    assert "routes[0].auth: expected an array of jwt / api_key, got a string" in problems(SVC + ROUTE + 'auth = "jwt"\n')
    assert "routes[0].auth: expected an array of jwt / api_key, got a boolean" in problems(SVC + ROUTE + 'auth = false\n')
    assert "routes[0].auth[0]: expected one of jwt, api_key, got 'basic'" in problems(SVC + ROUTE + 'auth = ["basic"]\n')
    assert problems(SVC + ROUTE + 'scopes = ["a"]\n') == [
        'routes[0].scopes: needs auth (scopes come from a credential; set auth = ["jwt"] and/or "api_key")']
    assert "routes[0].scopes[0]: expected a scope" in problems(SVC + ROUTE + 'auth = ["jwt"]\nscopes = ["a b"]\n')[0]
    cfg = loads_config(SVC + ROUTE + 'auth = ["jwt", "api_key", "jwt"]\nscopes = ["users:read"]\n')
    assert (cfg.routes[0].auth, cfg.routes[0].scopes) == (("jwt", "api_key"), ("users:read",))


def test_all_problems_are_collected() -> None:
    text = '''
bogus = 1
[[services]]
name = "s"
targets = [{ url = "ftp://x" }, { url = "http://a:1", weight = 0 }]
[[routes]]
name = "r"
path = "nope"
service = "missing"
limt = 3
auth = ["jwt"]
'''
    assert problems(text) == [
        "bogus: unknown key",
        "services[0].targets[0].url: expected http://host:port or https://host:port, got 'ftp://x'",
        "services[0].targets[1].weight: expected an integer 1-65535, got 0",
        "routes[0].limt: unknown key",
        "routes[0].path: expected a path starting with '/' (or '=/' for an exact match), got 'nope'",
        "routes[0].service: unknown service 'missing'",
    ]


def test_route_naming_a_service_with_problems_is_not_also_blamed() -> None:
    text = '[[services]]\nname = "s"\ntargets = []\n[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n'
    assert problems(text) == ["services[0].targets: expected at least one target"]


def test_partial_method_overlap_is_allowed() -> None:
    cfg = loads_config(SVC + ROUTE + 'methods = ["GET"]\n'
                       '[[routes]]\nname = "r2"\npath = "/api"\nmethods = ["GET", "POST"]\nservice = "users"\n')
    assert [r.methods for r in cfg.routes] == [("GET",), ("GET", "POST")]


def test_retries_reach_the_route() -> None:
    from gateway.routing import Route

    cfg = loads_config(SVC + ROUTE + "retries = 3\n")
    assert cfg.routes[0].retries == 3
    assert Route.from_config(cfg.routes[0], None).retries == 3


def test_same_path_on_different_hosts_is_allowed() -> None:
    cfg = loads_config(SVC + ROUTE + 'host = "a.example"\n'
                       '[[routes]]\nname = "r2"\npath = "/api"\nservice = "users"\n')
    assert [r.host for r in cfg.routes] == ["a.example", None]


def test_str_of_errors_is_one_line_per_problem() -> None:
    with pytest.raises(ConfigErrors) as info:
        loads_config("a = 1\nb = 2\n")
    assert str(info.value) == "a: unknown key\nb: unknown key"


SPEC_EXAMPLE = '''
[[services]]
name = "users"
balancer = "round_robin"
hash_key = "header:x-user-id"
targets = [
  { url = "http://127.0.0.1:9001", weight = 1, version = "v1" },
  { url = "http://127.0.0.1:9002", weight = 1, version = "v2" },
]
[services.health]
path = "/health"
interval = 5.0
timeout = 1.0
healthy_threshold = 2
unhealthy_threshold = 3
max_backoff = 60.0
[services.breaker]
failure_threshold = 5
error_rate = 0.5
min_requests = 20
window = 10.0
open_timeout = 60.0
half_open_requests = 3
success_threshold = 3

[[routes]]
name = "users-api"
path = "/api/users"
methods = ["GET", "POST"]
host = "api.example.com"
service = "users"
strip_prefix = false
auth = ["jwt", "api_key"]
scopes = ["users:read"]
timeout = 5.0
retries = 1
canary = { version = "v2", weight = 10, header = "x-canary" }
fallback = { status = 503, body = '{"error":"users_unavailable"}', content_type = "application/json" }
[[routes.rate_limits]]
key = "user"
limit = 100
window = 1.0
algorithm = "sliding_window"
burst = 20

[quotas]
default_user = { limit = 1000, window = 60.0 }
'''


def test_every_spec_key_is_known_and_built() -> None:
    # The SPEC §3 example verbatim: no key may be "unknown" or "not supported yet".
    assert sorted(problems(SPEC_EXAMPLE)) == sorted([
        # SPEC §3's example sets `burst` on a sliding window, which the issue refuses (a burst
        # belongs to token_bucket): the one refusal that is not "not supported yet".
        'routes[0].rate_limits[0].burst: only for algorithm = "token_bucket" (a sliding window has no burst)',
    ])


_KEYS = st.sampled_from(sorted({
    "name", "url", "weight", "version", "targets", "balancer", "path", "methods", "host", "service",
    "strip_prefix", "timeout", "retries", "auth", "websocket", "health", "x",
}))
_SCALARS = st.one_of(
    st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["/", "=/", "/api", "users", "http://a:1", "http://[::1]:2", "GET", "round_robin"]),
)
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "services": st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=3),
    "routes": st.lists(st.dictionaries(_KEYS, _VALUES, max_size=6), max_size=3),
}))
def test_any_document_gives_a_config_or_config_errors(doc: dict) -> None:  # type: ignore[type-arg]
    # Whatever shape the TOML has, the loader answers with a config or with path-carrying problems,
    # never a traceback (a KeyError or TypeError would crash SIGHUP reload handling).
    try:
        parse_config(doc)
    except ConfigErrors as exc:
        assert exc.problems and all(": " in p for p in exc.problems)


# Deep nesting: tomllib recurses per level, so 10,000 levels raised RecursionError through the
# loader (a traceback and exit 1 at start, an exception instead of a refusal at reload). How deep
# tomllib gets depends on the caller's stack, so the loader sets its own limit, the same everywhere.
DEEP = {
    "arrays": "a = " + "[" * 10000 + "]" * 10000 + "\n",
    "inline tables": "a = " + "{ b = " * 10000 + "1" + " }" * 10000 + "\n",
    "arrays in a route": SVC + ROUTE + "methods = " + "[" * 10000 + "]" * 10000 + "\n",
    "dotted table header": "[" + ".".join(["a"] * 10000) + "]\n",
    # routes (1) > the route table (2) > 31 arrays: 33 levels below the document
    "just over the limit": SVC + ROUTE + "auth = " + "[" * 31 + "]" * 31 + "\n",
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_a_configuration_error(text: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        loads_config(text, "gw.toml")
    assert info.value.problems == ["gw.toml: nesting too deep (more than 32 levels of arrays and tables)"]


def test_deep_nesting_from_a_deep_stack_is_still_a_configuration_error(tmp_path: Path) -> None:
    # Called with little stack left (as from a signal handler deep in a loop), the same refusal.
    f = tmp_path / "deep.toml"
    f.write_text(DEEP["arrays"])

    def dive(n: int) -> ConfigErrors:
        if n:
            return dive(n - 1)
        with pytest.raises(ConfigErrors) as info:
            load_config(str(f))
        return info.value

    import sys
    exc = dive(sys.getrecursionlimit() - 120)
    assert exc.problems == [f"{f}: nesting too deep (more than 32 levels of arrays and tables)"]


def test_nesting_up_to_the_limit_is_judged_on_its_content() -> None:
    # 32 levels below the document: routes, the route table, 30 arrays
    assert "routes[0].auth[0]: expected one of jwt, api_key, got [[[]]]" in problems(
        SVC + ROUTE + "auth = " + "[" * 4 + "]" * 4 + "\n")
    assert any(p.startswith("routes[0].auth[0]: expected one of jwt, api_key") for p in problems(
        SVC + ROUTE + "auth = " + "[" * 30 + "]" * 30 + "\n"))


def test_a_huge_value_is_not_echoed_whole() -> None:
    (line,) = problems(SVC + ROUTE + 'methods = ["' + "x y" * 100000 + '"]\n')
    assert line.startswith("routes[0].methods[0]: expected an HTTP method token, got 'x yx y")
    assert len(line) < 400


def test_the_boot_snapshot_variable_is_the_supervisors() -> None:
    from gateway import process
    from gateway.config import schema

    assert schema.BOOT_CONFIG_ENV == process.BOOT_CONFIG_ENV
