#!/usr/bin/env python3
"""TLS on the client side: the gateway against nginx with TLS, in one run, same method as
../shared/bench/compare.py (whose helpers it imports: wait_port, tree_ticks, the upstream nginx).

Topology as there: the proxy under test pinned to CPU 1, wrk and the upstream nginx on CPU 0. Both
proxies serve the same certificate (ECDSA P-256, made here with trustme), TLS 1.2/1.3 with their
defaults (both negotiate TLS 1.3, X25519, ECDSA signatures), one worker each, a keep-alive pool
to the same plain upstream.

Two workloads, each a subject per proxy, measured in rounds (nginx, then the gateway, again):

  keepalive   wrk -c64 over keep-alive HTTPS connections: CPU time (user+sys) of the proxy per
              request (cpu_us/req). What TLS adds per request once connections are set up:
              record encryption, and the transport layer in between.
  handshake   wrk with `Connection: close`: every request on a new connection, so a full TLS
              handshake each (wrk does not resume sessions); conn/s is full handshakes per second
              per worker, and cpu_us/conn the proxy's CPU per handshake-and-request.

Printed per round, then the median ratios over rounds (gateway / nginx): keepalive_cpu_vs_nginx,
handshake_rate_vs_nginx (higher is better), handshake_cpu_vs_nginx. With --plain, the same two
proxies without TLS (nginx: ../shared/bench/proxy-nginx.conf; the gateway: a second process of the
same tree) are measured in the same rounds with keep-alive, giving plain_cpu_vs_nginx and what
TLS adds per request to each (tls_added_us_gateway, tls_added_us_nginx).

Usage (hold the shared benchmark lock):
  flock /tmp/gateway-bench.lock python bench/tls_compare.py [--tree .] [--seconds 4] [--rounds 3] [--plain]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

SHARED = os.environ.get("GATEWAY_SHARED_BENCH", "/work/shared/bench")
sys.path.insert(0, SHARED)
import compare  # noqa: E402  (../shared/bench/compare.py: wait_port, tree_ticks, HZ, ports)

NGINX_TLS_PORT, GW_TLS_PORT, GW_TLS_ADMIN = 8443, 8444, 9921
GW_PLAIN_PORT, GW_PLAIN_ADMIN = 8445, 9922
NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream api {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} ssl reuseport backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
"""


def wrk_https(port: int, seconds: int, conns: int, close: bool, scheme: str = "https") -> dict:
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"{scheme}://127.0.0.1:{port}/api/users/42")
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "n": int(n.group(1)) if n else 0,
            "non2xx": int(bad.group(1)) if bad else 0, "sockerr": sock.group(1) if sock else ""}


def measure(name: str, port: int, pid: int, seconds: int, conns: int, close: bool, scheme: str = "https") -> dict:
    t0 = compare.tree_ticks(pid)
    r = wrk_https(port, seconds, conns, close, scheme)
    r["cpu"] = (compare.tree_ticks(pid) - t0) / compare.HZ / r["n"] * 1e6 if r["n"] else float("nan")
    unit = "conn" if close else "req"
    print(f"{name:<22} {unit}/s={r['rps']:>8.0f}  cpu_us/{unit}={r['cpu']:>7.1f}  non2xx={r['non2xx']} "
          f"{r['sockerr']}", flush=True)
    return r


def median(vals: list[float]) -> float:
    return sorted(vals)[len(vals) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="the gateway source tree to run (python -m gateway from it)")
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--handshake-conns", type=int, default=16)
    ap.add_argument("--plain", action="store_true", help="also both proxies without TLS, keep-alive")
    a = ap.parse_args()
    import trustme

    tmp = tempfile.mkdtemp(prefix="gw-tls-bench-")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, up=compare.UPSTREAM_PORT, port=NGINX_TLS_PORT, cert=cert, key=key))

    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], cpu: int, env: dict | None = None, log: str = "log") -> subprocess.Popen:
        p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, env=env, start_new_session=True,
                             stdout=open(os.path.join(tmp, log), "ab"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start(["nginx", "-c", os.path.join(SHARED, "upstream-nginx.conf")], 0, log="upstream.log")
        ngx = start(["nginx", "-c", os.path.join(tmp, "nginx.conf")], 1, log="nginx.log")
        env = {**os.environ, "PYTHONPATH": a.tree, "GATEWAY_CONFIG": os.path.join(SHARED, "gateway-plain.toml"),
               "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(GW_TLS_PORT), "GATEWAY_ADMIN_PORT": str(GW_TLS_ADMIN),
               "GATEWAY_WORKERS": "1", "GATEWAY_ACCESS_LOG": "off", "GATEWAY_TLS_CERT": cert, "GATEWAY_TLS_KEY": key}
        gw = start([sys.executable, "-m", "gateway", "run"], 1, env=env, log="gateway.log")
        ports = [compare.UPSTREAM_PORT, NGINX_TLS_PORT, GW_TLS_PORT]
        plain: list[tuple[str, int, int]] = []
        if a.plain:
            ngx_plain = start(["nginx", "-c", os.path.join(SHARED, "proxy-nginx.conf")], 1, log="nginx-plain.log")
            env_plain = {k: v for k, v in env.items() if not k.startswith("GATEWAY_TLS_")}
            env_plain.update(GATEWAY_PORT=str(GW_PLAIN_PORT), GATEWAY_ADMIN_PORT=str(GW_PLAIN_ADMIN))
            gw_plain = start([sys.executable, "-m", "gateway", "run"], 1, env=env_plain, log="gateway-plain.log")
            plain = [("nginx", compare.NGINX_PORT, ngx_plain.pid), ("gateway", GW_PLAIN_PORT, gw_plain.pid)]
            ports += [compare.NGINX_PORT, GW_PLAIN_PORT]
        for port in ports:
            if not compare.wait_port(port):
                print(f"port {port} did not open; see {tmp}", file=sys.stderr)
                return 2
        time.sleep(0.5)
        subjects = [("nginx", NGINX_TLS_PORT, ngx.pid), ("gateway", GW_TLS_PORT, gw.pid)]
        ratios: dict[str, list[float]] = {}
        errors = False
        for rnd in range(a.rounds):
            print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
            if plain:
                prow = {name: measure(f"{name}-plain-keepalive", port, pid, a.seconds, a.conns, False, "http")
                        for name, port, pid in plain}
                ratios.setdefault("plain_cpu_vs_nginx", []).append(prow["gateway"]["cpu"] / prow["nginx"]["cpu"])
            for workload, close, conns in (("keepalive", False, a.conns), ("handshake", True, a.handshake_conns)):
                rows = {name: measure(f"{name}-tls-{workload}", port, pid, a.seconds, conns, close)
                        for name, port, pid in subjects}
                g, n = rows["gateway"], rows["nginx"]
                errors |= bool(g["non2xx"] or g["sockerr"] or not g["n"])
                if plain and not close:
                    ratios.setdefault("tls_added_us_gateway", []).append(g["cpu"] - prow["gateway"]["cpu"])
                    ratios.setdefault("tls_added_us_nginx", []).append(n["cpu"] - prow["nginx"]["cpu"])
                ratios.setdefault(f"{workload}_cpu_vs_nginx", []).append(g["cpu"] / n["cpu"])
                if close:
                    ratios.setdefault("handshake_rate_vs_nginx", []).append(g["rps"] / n["rps"])
                    ratios.setdefault("gateway_handshakes_per_s", []).append(g["rps"])
                    ratios.setdefault("nginx_handshakes_per_s", []).append(n["rps"])
        for k, vals in ratios.items():
            print(f"{k} per round: " + " ".join(f"{v:.2f}" for v in vals))
        print(" ".join(f"{k}={median(v):.2f}" for k, v in ratios.items()) + (" (ERRORS)" if errors else ""))
        return 0
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


if __name__ == "__main__":
    sys.exit(main())
