#!/usr/bin/env python3
"""Does routing cost depend on the number of routes? N generated routes (1, 100, 1,000, 10,000) in
three mixes, measured two ways:

  micro   the match itself (Router.match, in process) for the first, middle and last route and an
          unmatched path; plus what a reload of such a file costs: TOML parse, validation
          (loads_config), compiling the runtime (build_runtime: chains, services, the router)
          and the router alone. No lock needed (one core, no sockets).
  wrk     the gateway over sockets on compare.py's topology (gateway pinned to CPU 1; wrk and the
          upstream nginx on CPU 0), one gateway per N running side by side, so every N is measured
          in the same rounds. Per round and target (first, middle, last, unmatched): CPU per
          request (user+sys of the gateway's processes / requests wrk counted). Holds
          /tmp/gateway-bench.lock for each mix separately (a mix takes about 2 minutes).

Mixes (every route sends to one upstream, so only routing differs):
  prefix  /api/v1/svc{i}/                        request /api/v1/svc{i}/items/42
  exact   =/api/v1/svc{i}/items                  request /api/v1/svc{i}/items
  host    host h{i}.example, path /api/          request /api/users/42 with Host: h{i}.example
The unmatched request is /api/v1/nosuch/items/42 (host mix: Host nosuch.example): a 404 that has
looked at the most the router holds. The figure: for each target, CPU per request with the largest
N over N=1 in the same round; the worst target's median over rounds.

Usage: python bench/routing_scale.py micro [--sizes 1,100,1000,10000] [--mixes prefix,exact,host]
       python bench/routing_scale.py wrk [--sizes 1,10000] [--mixes prefix] [--seconds 3] [--rounds 3]
                                         [--conns 64] [--tree SOURCE_TREE]
Run from the source tree to measure (built in place); wrk mode needs wrk and nginx.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import timeit
import tracemalloc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED_BENCH = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench"))
sys.path.insert(0, ROOT)
sys.path.insert(0, SHARED_BENCH)

MIXES = ("prefix", "exact", "host")
UPSTREAM = "http://127.0.0.1:9001"


def route_toml(mix: str, i: int) -> str:
    if mix == "prefix":
        where = f'path = "/api/v1/svc{i}/"'
    elif mix == "exact":
        where = f'path = "=/api/v1/svc{i}/items"'
    else:
        where = f'path = "/api/"\nhost = "h{i}.example"'
    return f'[[routes]]\nname = "r{i}"\n{where}\nservice = "bench"\n'


def config_text(mix: str, n: int) -> str:
    head = f'[[services]]\nname = "bench"\ntargets = [{{ url = "{UPSTREAM}" }}]\n'
    return head + "\n" + "\n".join(route_toml(mix, i) for i in range(n))


def request_for(mix: str, i: int | None) -> tuple[bytes, bytes]:
    """(Host, path) of a request for route i; None: a request no route takes."""
    if mix == "host":
        return (b"nosuch.example" if i is None else f"h{i}.example".encode()), b"/api/users/42"
    if i is None:
        return b"bench.example", b"/api/v1/nosuch/items/42"
    if mix == "prefix":
        return b"bench.example", f"/api/v1/svc{i}/items/42".encode()
    return b"bench.example", f"/api/v1/svc{i}/items".encode()


def targets(n: int) -> list[tuple[str, int | None]]:
    return [("first", 0), ("middle", n // 2), ("last", n - 1), ("unmatched", None)]


# --------------------------------------------------------------------------------------------- micro

def micro(a: argparse.Namespace) -> int:
    import tomllib

    from gateway.config import loads_config
    from gateway.config.env import load_settings
    from gateway.routing import Router
    from gateway.runtime import build_runtime

    class NoPool:
        def __init__(self, *args: object) -> None:
            pass

        def close(self) -> None:
            pass

    settings = load_settings({})
    build_runtime(loads_config(config_text("prefix", 1)), settings, None, pool_factory=NoPool)  # imports
    print("match: ns per Router.match (best of 7 repeats); reload: seconds for one N-route file:\n"
          "TOML parse, validation (loads_config minus the parse), build_runtime (everything a reload\n"
          "compiles, router included), the router alone (traced: MB it allocates, trie nodes)")
    print(f"{'mix':<7} {'N':>6} {'first':>7} {'middle':>7} {'last':>7} {'unmatched':>9} | "
          f"{'toml':>6} {'validate':>8} {'runtime':>7} {'router':>6} {'MB':>5} {'nodes':>6}")
    for mix in a.mixes:
        for n in a.sizes:
            text = config_text(mix, n)
            t0 = time.perf_counter()
            tomllib.loads(text)
            t1 = time.perf_counter()
            cfg = loads_config(text)          # parse + validate
            t2 = time.perf_counter()
            rt = build_runtime(cfg, settings, None, pool_factory=NoPool)
            t3 = time.perf_counter()
            routes = list(rt.router.routes)
            t4 = time.perf_counter()
            router = Router(routes)
            t5 = time.perf_counter()
            tracemalloc.start()                       # again, traced: what the tables hold (routes aside)
            kept = Router(routes)
            mem = tracemalloc.get_traced_memory()[0] / 1e6
            tracemalloc.stop()
            del kept
            cells = []
            for label, i in targets(n):
                host, path = request_for(mix, i)
                got = router.match(b"GET", host, path)
                want = f"r{i}" if i is not None else None
                assert (getattr(got, "name", None) == want), (mix, n, label, got)
                loops = 20000
                best = min(timeit.repeat(lambda h=host, p=path, m=router.match: m(b"GET", h, p),
                                         number=loops, repeat=7))
                cells.append(best / loops * 1e9)
            t = router._default if mix != "host" else None
            nodes = t.nodes if t is not None else len(router._hosts)
            print(f"{mix:<7} {n:>6} {cells[0]:>7.0f} {cells[1]:>7.0f} {cells[2]:>7.0f} {cells[3]:>9.0f} | "
                  f"{t1 - t0:>6.3f} {t2 - t1:>8.3f} {t3 - t2:>7.3f} {t5 - t4:>6.3f} {mem:>5.1f} {nodes:>6}",
                  flush=True)
    return 0


# -------------------------------------------------------------------------------------------- reload

def reload_mode(a: argparse.Namespace) -> int:
    """A running gateway (1 worker) with N prefix routes: rewrite its file with one route added
    (then removed), SIGHUP, and poll over one keep-alive connection until the change is served.
    The worker's loop compiles the new config in between, so the time to the first answer that
    shows the change is what a reload costs (and how long requests wait meanwhile). A route in
    the middle of the table is asked for after every reload: it must still be routed."""
    import tempfile

    tmp = tempfile.mkdtemp(prefix="gw-reload-")
    print(f"reload: seconds from SIGHUP to the change being served (1 worker, prefix mix, {a.rounds} trials)")
    failed = False
    for n in a.sizes:
        added, removed, ok = _reload_trials(n, a.rounds, tmp)
        failed |= not ok
        print(f"  N={n:>6}: add " + " ".join(f"{v:.3f}" for v in added) + f"  (median {median(added):.3f})"
              f" | remove " + " ".join(f"{v:.3f}" for v in removed) + f"  (median {median(removed):.3f})",
              flush=True)
    if failed:
        print("ERRORS: a route untouched by a reload was no longer routed")
    return 1 if failed else 0


class _Polled:
    """One keep-alive connection to a gateway started on a config file, and SIGHUP timing."""

    def __init__(self, n: int, tmp: str, port: int = 18190) -> None:
        import http.client
        import subprocess

        self.cfg = os.path.join(tmp, f"{n}.toml")
        self.base = config_text("prefix", n)
        with open(self.cfg, "w") as f:
            f.write(self.base)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), GATEWAY_ADMIN_PORT=str(port + 1),
                   GATEWAY_WORKERS="1", GATEWAY_ACCESS_LOG="off", GATEWAY_LOG_LEVEL="warning",
                   GATEWAY_CONFIG=self.cfg, PYTHONPATH=ROOT)
        with open(os.path.join(tmp, f"gw-{n}.log"), "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], env=env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        end = time.time() + 60
        while True:
            try:
                self.status("/nothing")
                return
            except OSError:
                if time.time() > end:
                    self.close()
                    raise
                self.conn.close()
                time.sleep(0.1)

    def status(self, path: str) -> int:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        r.read()
        return r.status

    def change(self, text: str, path: str, routed: bool) -> float:
        """Seconds from SIGHUP until `path` is routed (any answer but 404: the upstream may be
        down) or, routed=False, until it is a 404 again."""
        import signal

        with open(self.cfg, "w") as f:
            f.write(text)
        t0 = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGHUP)
        while (self.status(path) != 404) != routed:
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"reload not served after 30 s: see {self.cfg}'s log")
        return time.perf_counter() - t0

    def close(self) -> None:
        import signal

        self.conn.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


def _reload_trials(n: int, trials: int, tmp: str) -> tuple[list[float], list[float], bool]:
    gw = _Polled(n, tmp)
    added, removed, ok = [], [], True
    mid = f"/api/v1/svc{n // 2}/items/42"
    try:
        for k in range(trials):
            extra = f'\n[[routes]]\nname = "added{k}"\npath = "/api/v1/added{k}/"\nservice = "bench"\n'
            added.append(gw.change(gw.base + extra, f"/api/v1/added{k}/x", True))
            ok &= gw.status(mid) != 404
            removed.append(gw.change(gw.base, f"/api/v1/added{k}/x", False))
            ok &= gw.status(mid) != 404
    finally:
        gw.close()
    return added, removed, ok


# ----------------------------------------------------------------------------------------------- wrk

def wrk_mode(a: argparse.Namespace) -> int:
    import compare  # ../shared/bench/compare.py: measure(), wait_port(), ports
    from ab_gateways import bench_lock
    from procs import Procs

    worst: dict[str, list[float]] = {}
    best: dict[tuple[str, int], float] = {}   # (mix/target, N) -> lowest cpu_us/req over the rounds
    errors = False
    tree = os.path.abspath(a.tree)
    for mix in a.mixes:
        with bench_lock(), Procs(f"gw-routing-{mix}-") as procs:
            start = procs.start
            start(["nginx", "-c", os.path.join(SHARED_BENCH, "upstream-nginx.conf")], 0, log="upstream.log")
            base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
            base.update(GATEWAY_HOST="127.0.0.1", GATEWAY_WORKERS="1", GATEWAY_LOG_LEVEL="warning",
                        GATEWAY_ACCESS_LOG="off", PYTHONPATH=tree)
            gws = {}
            for k, n in enumerate(a.sizes):
                cfg = os.path.join(procs.tmp, f"{mix}-{n}.toml")
                with open(cfg, "w") as f:
                    f.write(config_text(mix, n))
                env = dict(base, GATEWAY_CONFIG=cfg, GATEWAY_PORT=str(compare.GW_PORT + k),
                           GATEWAY_ADMIN_PORT=str(compare.GW_ADMIN + k))
                gws[n] = (compare.GW_PORT + k, start([sys.executable, "-m", "gateway", "run"], 1, env=env,
                                                      cwd=tree, log=f"gw-{mix}-{n}.log"))
            for port in (compare.UPSTREAM_PORT, *(p for p, _ in gws.values())):
                if not compare.wait_port(port, 60):
                    print(f"port {port} did not open; logs in {procs.tmp}", file=sys.stderr)
                    return 2
            small, big = min(a.sizes), max(a.sizes)
            print(f"== mix {mix}: cpu_us/req per N (ratio: N={big} over N={small}, same round)", flush=True)
            for rnd in range(a.rounds):
                print(f"-- round {rnd + 1}/{a.rounds}", flush=True)
                for label, _ in targets(big):
                    cpu = {}
                    # Alternate which N goes first, so a trend in the machine's load (a neighbour's
                    # job starting) does not always land on the same N.
                    for n in (a.sizes if rnd % 2 == 0 else a.sizes[::-1]):
                        i = dict(targets(n))[label]
                        host, path = request_for(mix, i)
                        r = measure_path(compare, a, gws[n][0], gws[n][1].pid, host, path,
                                         f"{mix}/{n}/{label}")
                        expect_404 = i is None
                        if r["n"] == 0 or r["sockerr"] or (bool(r["non2xx"]) != expect_404):
                            errors = True
                        cpu[n] = r["cpu"]
                        best[(f"{mix}/{label}", n)] = min(best.get((f"{mix}/{label}", n), r["cpu"]), r["cpu"])
                    ratio = cpu[big] / cpu[small]
                    worst.setdefault(f"{mix}/{label}", []).append(ratio)
                    print(f"   {mix}/{label}: N={big} over N={small} = {ratio:.3f}", flush=True)
    print("ratios per round (largest N over N=1, same round):")
    for key, vals in worst.items():
        print(f"  {key:<20} " + " ".join(f"{v:.3f}" for v in vals) + f"   median {median(vals):.3f}")
    # Each target's best round for each N: neighbours' noise only adds CPU, so the lowest figure of
    # each is the steadier estimate (as compare.py's *_best); the medians stay the headline.
    small, big = min(a.sizes), max(a.sizes)
    best_ratio = {key: best[(key, big)] / best[(key, small)] for key in worst}
    print("best-round ratios: " + " ".join(f"{k}={v:.3f}" for k, v in best_ratio.items()))
    per_target = {key: median(vals) for key, vals in worst.items()}
    key = max(per_target, key=per_target.__getitem__)
    bkey = max(best_ratio, key=best_ratio.__getitem__)
    print(f"routing_cpu_ratio_worst={per_target[key]:.3f} ({key}) "
          f"routing_cpu_ratio_worst_best={best_ratio[bkey]:.3f} ({bkey}){' (ERRORS)' if errors else ''}")
    return 1 if errors else 0


def measure_path(compare, a, port, pid, host: bytes, path: bytes, name: str) -> dict:  # type: ignore[no-untyped-def]
    """compare.measure() for one path and Host (compare.wrk always asks for /api/users/42)."""
    import re
    import subprocess

    t0 = compare.tree_ticks(pid)
    cmd = ["taskset", "-c", "0", "wrk", "-t1", f"-c{a.conns}", f"-d{a.seconds}s", "--latency",
           "-H", f"Host: {host.decode()}", f"http://127.0.0.1:{port}{path.decode()}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    n = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    r = {"n": int(n.group(1)) if n else 0, "rps": float(rps.group(1)) if rps else 0.0,
         "non2xx": int(bad.group(1)) if bad else 0, "sockerr": sock.group(1) if sock else ""}
    r["cpu"] = (compare.tree_ticks(pid) - t0) / compare.HZ / r["n"] * 1e6 if r["n"] else float("nan")
    print(f"   {name:<28} rps={r['rps']:>8.0f} cpu_us/req={r['cpu']:>6.1f} non2xx={r['non2xx']} {r['sockerr']}",
          flush=True)
    return r


def median(vals: list[float]) -> float:
    return sorted(vals)[len(vals) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["micro", "wrk", "reload"])
    ap.add_argument("--sizes", default=None, help="comma-separated route counts")
    ap.add_argument("--mixes", default=",".join(MIXES))
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--tree", default=ROOT, help="source tree whose gateway runs (wrk mode; built in place)")
    a = ap.parse_args()
    a.mixes = [m for m in a.mixes.split(",") if m]
    if any(m not in MIXES for m in a.mixes):
        ap.error(f"mixes are {', '.join(MIXES)}")
    default = "1,10000" if a.mode == "wrk" else "1,100,1000,10000"
    a.sizes = sorted(int(s) for s in (a.sizes or default).split(","))
    return {"micro": micro, "wrk": wrk_mode, "reload": reload_mode}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
