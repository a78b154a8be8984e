"""TLS settings: the listeners' certificate variables (env) and a service's https:// targets,
`tls_verify` and `ca_file` (TOML), each refused with the variable or the TOML path that is wrong."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigErrors, EnvError, load_settings, loads_config
from gateway.runtime import pool_key, upstream_tls
from gateway.tls import ServerTLS, UpstreamTLS, client_context

trustme = pytest.importorskip("trustme")


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pem")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    other = trustme.CA().issue_cert("localhost")
    files = {"cert": leaf.cert_chain_pems[0], "key": leaf.private_key_pem, "ca": ca.cert_pem,
             "other_key": other.private_key_pem}
    out = {}
    for name, blob in files.items():
        blob.write_to_path(str(d / f"{name}.pem"))
        out[name] = str(d / f"{name}.pem")
    (d / "junk.pem").write_text("not a certificate\n")
    out["junk"] = str(d / "junk.pem")
    return out


def env_error(environ: dict[str, str]) -> EnvError:
    with pytest.raises(EnvError) as info:
        load_settings(environ)
    return info.value


def test_listener_certificates_load(pem: dict[str, str]) -> None:
    s = load_settings({"GATEWAY_TLS_CERT": pem["cert"], "GATEWAY_TLS_KEY": pem["key"],
                       "GATEWAY_ADMIN_TLS_CERT": pem["cert"], "GATEWAY_ADMIN_TLS_KEY": pem["key"]})
    assert (s.tls_cert, s.tls_key) == (pem["cert"], pem["key"])
    tls = ServerTLS.data_plane(s)
    assert tls is not None and tls.context.minimum_version >= __import__("ssl").TLSVersion.TLSv1_2
    assert ServerTLS.admin(s) is not None
    assert ServerTLS.data_plane(load_settings({})) is None


@pytest.mark.parametrize(("env", "var", "words"), [
    ({"GATEWAY_TLS_CERT": "cert"}, "GATEWAY_TLS_KEY", "needs GATEWAY_TLS_KEY"),
    ({"GATEWAY_TLS_KEY": "key"}, "GATEWAY_TLS_CERT", "needs GATEWAY_TLS_CERT"),
    ({"GATEWAY_TLS_CERT": "junk", "GATEWAY_TLS_KEY": "key"}, "GATEWAY_TLS_CERT", "holds no PEM certificate"),
    ({"GATEWAY_TLS_CERT": "key", "GATEWAY_TLS_KEY": "key"}, "GATEWAY_TLS_CERT", "holds no PEM certificate"),
    ({"GATEWAY_TLS_CERT": "cert", "GATEWAY_TLS_KEY": "cert"}, "GATEWAY_TLS_CERT", "holds no PEM private key"),
    ({"GATEWAY_TLS_CERT": "cert", "GATEWAY_TLS_KEY": "other_key"}, "GATEWAY_TLS_CERT",
     "the private key does not belong to the certificate"),
    ({"GATEWAY_TLS_CERT": "cert", "GATEWAY_TLS_KEY": "/nonexistent/key.pem"}, "GATEWAY_TLS_KEY", "not a file"),
    ({"GATEWAY_ADMIN_TLS_CERT": "cert"}, "GATEWAY_ADMIN_TLS_KEY", "needs GATEWAY_ADMIN_TLS_KEY"),
])
def test_bad_listener_certificates_name_the_variable(pem: dict[str, str], env: dict[str, str], var: str,
                                                     words: str) -> None:
    environ = {k: pem.get(v, v) for k, v in env.items()}
    err = env_error(environ)
    assert err.var == var, err
    assert words in err.message, err.message


def test_a_refused_reload_keeps_the_context(pem: dict[str, str], tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_bytes(Path(pem["cert"]).read_bytes())
    tls = ServerTLS(str(cert), pem["key"], "GATEWAY_TLS_CERT", "GATEWAY_TLS_KEY")
    before = tls.context
    cert.write_text("broken")
    assert tls.reload() is False and tls.context is before
    cert.write_bytes(Path(pem["cert"]).read_bytes())
    assert tls.reload() is True and tls.context is not before and tls.reloads == 1


SVC = '[[services]]\nname = "s"\ntargets = [{}]\n{}\n[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n'


def test_https_targets_and_their_trust(pem: dict[str, str]) -> None:
    cfg = loads_config(SVC.format('"https://API.example.com", "https://10.0.0.1:8443", "http://10.0.0.2"',
                                  f'ca_file = "{pem["ca"]}"'))
    sc = cfg.services[0]
    assert [(t.host, t.port, t.tls) for t in sc.targets] == [
        ("api.example.com", 443, True), ("10.0.0.1", 8443, True), ("10.0.0.2", 80, False)]
    assert sc.tls_verify is True and sc.ca_file == pem["ca"]
    tls = upstream_tls(sc, sc.targets[0])
    assert tls == UpstreamTLS.of(True, pem["ca"]) and upstream_tls(sc, sc.targets[2]) is None
    # Plain and TLS pools, or two trust settings, never share a key (and so never connections).
    assert pool_key("h", 443, None) != pool_key("h", 443, tls) != pool_key("h", 443, UpstreamTLS.of(False, None))
    assert client_context(tls).verify_mode.name == "CERT_REQUIRED"
    off = client_context(UpstreamTLS.of(False, None))
    assert off.verify_mode.name == "CERT_NONE" and off.check_hostname is False


def test_the_host_sent_upstream_leaves_out_the_scheme_default_port() -> None:
    from gateway.discovery.service import Target

    assert Target("a.example", 443, url="https://a.example").host_header == b"a.example"
    assert Target("a.example", 8443, url="https://a.example:8443").host_header == b"a.example:8443"
    assert Target("a.example", 443, url="http://a.example:443").host_header == b"a.example:443"
    assert Target("a.example", 80, url="http://a.example").host_header == b"a.example"


@pytest.mark.parametrize(("extra", "problem"), [
    ('ca_file = "/nonexistent/ca.pem"', "services[0].ca_file: expected a PEM file of CA certificates"),
    ('ca_file = "JUNK"', "services[0].ca_file: expected a PEM file of CA certificates"),
    ("ca_file = 3", "services[0].ca_file: expected a string"),
    ('tls_verify = "no"', "services[0].tls_verify: expected true or false"),
])
def test_bad_trust_settings_name_the_path(pem: dict[str, str], extra: str, problem: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        loads_config(SVC.format('"https://a.example"', extra.replace("JUNK", pem["junk"])))
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
