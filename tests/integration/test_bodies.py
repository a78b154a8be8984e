"""Issue 17 over real sockets: large bodies through a real worker, byte-exact both ways, without
fresh memory per read (minor page faults per MiB, which are deterministic where time is not), and
with memory bounded when clients read slowly.

The peers are tests/support/bulk_peers.py: pseudo-random bodies checked by sha256, sized and
chunked, at full speed or slowly on either side.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.bulk_peers import BulkUpstream, digest, download, upload
from tests.support.gateway_proc import GatewayProcess

MIB = 1 << 20
# uvloop's default write high-water mark: what a transport holds before pause_writing.
HIGH_WATER = 64 * 1024


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def minflt(pid: int) -> int:
    """Minor page faults of pid and its descendants (a page the kernel handed out afresh)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                total += int(f.read().rsplit(")", 1)[1].split()[7])
        except (OSError, ValueError, IndexError):
            pass
    return total


def rss(pid: int) -> int:
    """Resident bytes of the worker (the process itself: GATEWAY_WORKERS=1 runs one process)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def bulk() -> Iterator[tuple[GatewayProcess, BulkUpstream]]:
    up = BulkUpstream()
    config = f"""
[[services]]
name = "bulk"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "bulk"
path = "/"
service = "bulk"
"""
    gw = GatewayProcess(config, env={"GATEWAY_WORKERS": "1", "GATEWAY_ACCESS_LOG": "off",
                                     "GATEWAY_MAX_BODY_BYTES": str(1 << 30), "GATEWAY_BODY_TIMEOUT": "20"})
    try:
        assert tree_pids(gw.pid) == [gw.pid], "one worker runs in the gateway process itself"
        yield gw, up
    finally:
        gw.kill()
        up.stop()


def check_down(gw: GatewayProcess, kind: str, n: int, seed: int, **kw: object) -> None:
    status, got, sha = download(gw.port, f"/{kind}?n={n}&seed={seed}", **kw)  # type: ignore[arg-type]
    assert (status, got) == (200, n)
    assert sha == digest(seed, n), f"{kind} download of {n} bytes differs"


def check_up(gw: GatewayProcess, n: int, seed: int, chunk: bool, path: str = "/sink") -> None:
    try:
        echo = upload(gw.port, path, seed, n, chunk)
    except (OSError, ValueError) as exc:
        raise AssertionError(f"upload failed: {exc!r}; gateway log:\n{gw.stderr[-3000:]}") from exc
    assert echo == {"len": n, "sha256": digest(seed, n)}, f"upload (chunked={chunk}) of {n} bytes differs"


def test_bulk_bodies_fault_no_fresh_pages(bulk: tuple[GatewayProcess, BulkUpstream]) -> None:
    """256 MiB of bodies (downloads and uploads, sized and chunked) through the worker: a handful of
    minor page faults per MiB (glibc's defaults fault every page of every read: ~370 per MiB)."""
    gw, _ = bulk
    # Warm-up: the heap grows once to its working size (those first-touch faults are not per MiB).
    check_down(gw, "sized", 8 * MIB, 1)
    check_down(gw, "chunked", 8 * MIB, 2)
    check_up(gw, 8 * MIB, 3, chunk=False)
    check_up(gw, 8 * MIB, 4, chunk=True)
    before = minflt(gw.pid)
    n = 64 * MIB
    check_down(gw, "sized", n, 11)
    check_down(gw, "chunked", n, 12)
    check_up(gw, n, 13, chunk=False)
    check_up(gw, n, 14, chunk=True)
    per_mib = (minflt(gw.pid) - before) / (4 * n / MIB)
    assert per_mib < 5, f"{per_mib:.1f} minor page faults per MiB proxied"


def test_chunked_to_http10_client_exact(bulk: tuple[GatewayProcess, BulkUpstream]) -> None:
    """A chunked response to an HTTP/1.0 client is de-chunked and ends with the close: the inside
    of each upstream chunk passes as it is, sizes, extensions and the trailer never do."""
    gw, _ = bulk
    for n in (1, 300_001, 8 * MIB + 3):
        status, got, sha = download(gw.port, f"/chunked?n={n}&seed=5", version=b"1.0")
        assert (status, got, sha) == (200, n, digest(5, n))


@pytest.mark.parametrize("kind", ["sized", "chunked"])
def test_download_exact_under_backpressure(bulk: tuple[GatewayProcess, BulkUpstream], kind: str) -> None:
    """A client with a small receive buffer that reads slowly for a while, then fast: the gateway
    pauses the upstream and resumes it many times; every byte arrives once, in order."""
    gw, _ = bulk
    n = 24 * MIB
    s = socket.create_connection(("127.0.0.1", gw.port))
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        # 4 MiB/s in 4 KiB reads for the first 4 MiB (the gateway's writes back up), then fast
        status, got, sha = _paced_download(s, f"/{kind}?n={n}&seed=21", slow_bytes=4 * MIB, rate=4 * MIB)
        assert (status, got, sha) == (200, n, digest(21, n))
    finally:
        s.close()


def _paced_download(s: socket.socket, path: str, slow_bytes: int, rate: float) -> tuple[int, int, str]:
    import hashlib

    from tests.support.bulk_peers import Reader

    s.sendall(b"GET %s HTTP/1.1\r\nHost: bulk\r\n\r\n" % path.encode())
    r = Reader(s, rate=rate, piece=4096)
    line, fields = r.head()
    h = hashlib.sha256()

    def sink(b: bytearray) -> None:
        h.update(b)
        if r.got > slow_bytes:
            r.rate, r.piece = 0.0, 65536

    n = r.body(fields, sink)
    return int(line.split()[1]), n, h.hexdigest()


@pytest.mark.parametrize("chunk", [False, True])
def test_upload_exact_under_backpressure(bulk: tuple[GatewayProcess, BulkUpstream], chunk: bool) -> None:
    """An upstream that waits, then reads slowly: the gateway's upstream write buffer fills and the
    client's reading pauses; the body arrives whole and exact."""
    gw, _ = bulk
    check_up(gw, 24 * MIB, 31 + chunk, chunk, path="/sink?slow=700")


def test_slow_readers_bound_worker_memory(bulk: tuple[GatewayProcess, BulkUpstream]) -> None:
    """100 clients reading large responses at 1 MiB/s, the upstream sending as fast as it can: the
    worker's RSS grows by a few write high-water marks per connection, and not with the bytes sent
    (it is sampled for 10 s while ~1 GiB goes through)."""
    gw, _ = bulk
    clients, rate, seconds = 100, MIB, 10.0
    check_down(gw, "sized", 4 * MIB, 40)   # (warm: the heap's working size for one transfer)
    idle = rss(gw.pid)
    stop = threading.Event()
    errors: list[BaseException] = []
    received = [0] * clients

    def reader(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", gw.port)) as s:
                s.settimeout(30)
                s.sendall(b"GET /sized?n=%d&seed=%d HTTP/1.1\r\nHost: bulk\r\n\r\n" % (1 << 30, i))
                t0, got = time.monotonic(), 0
                while not stop.is_set():
                    due = t0 + got / rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(min(due - now, 0.1))
                        continue
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("gateway closed a slow reader")
                    got += len(data)
                    received[i] = got
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    samples = []
    try:
        # every connection open and flowing, its buffers (kernel and ours) filled
        deadline = time.monotonic() + 20
        while min(received) < 2 * MIB and time.monotonic() < deadline and not errors:
            time.sleep(0.1)
        time.sleep(1.0)
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            samples.append(rss(gw.pid))
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors[:3]
    grown = max(samples) - idle
    per_conn = grown / clients
    assert per_conn < 4 * HIGH_WATER, (
        f"worker RSS grew {grown / MIB:.1f} MiB with {clients} slow readers "
        f"({per_conn / 1024:.0f} KiB per connection, idle {idle / MIB:.1f} MiB)")
    # not with the bytes sent (~1 GiB while sampled): the last samples are the first ones, give or take
    assert max(samples[-4:]) - max(samples[:4]) < clients * HIGH_WATER // 4, [s // 1024 for s in samples]
