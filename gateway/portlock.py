"""One gateway per listening address: an advisory lock taken before any worker starts.

Supervised workers bind with SO_REUSEPORT, and the kernel lets any process of the same user join
that group: a second `gateway run` on the same address would silently serve alongside the first,
each getting a share of the connections (and a probe bind without SO_REUSEPORT only catches a
second instance once the first one's workers listen, not when both start within ~0.1 s). So the
process that owns the address (the supervisor, or the single process when GATEWAY_WORKERS=1)
first takes an flock on a file named after host:port in a runtime directory, writes its pid into
it, and only then probes the port and starts workers. A second instance finds the lock held and
exits 1 naming the port and the holder's pid.

GATEWAY_REUSE_PORT=shared opts in to sharing on purpose: such instances take the lock shared, so
they coexist with each other and are still refused by (and refuse) an exclusive one.

Directory: $XDG_RUNTIME_DIR/gateway when set, else /run/gateway for root, else
<tmp>/gateway-<uid>, the first that can be created and is ours (a directory someone else owns or
can write to is skipped). The kernel drops the lock when the process dies, however it dies; the
files killed instances leave behind are removed by the next acquire (`sweep`). An exclusive holder removes its
file when it releases it, still holding the lock, and `acquire` checks after locking that the path
still names the file it locked (else it retries): a late opener never holds a lock on an unlinked
file while another instance holds the new one.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile

SHARED_HINT = "GATEWAY_REUSE_PORT=shared on every instance to share it on purpose"


class AddressLocked(OSError):
    """Another gateway holds the address; the message is one operator-ready line."""


def lock_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    uid = os.geteuid()
    candidates = []
    xdg = environ.get("XDG_RUNTIME_DIR")
    if xdg:
        candidates.append(os.path.join(xdg, "gateway"))
    if uid == 0:
        candidates.append("/run/gateway")
    candidates.append(os.path.join(tempfile.gettempdir(), f"gateway-{uid}"))
    for d in candidates:
        try:
            os.makedirs(d, mode=0o700, exist_ok=True)
            st = os.lstat(d)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
            return d
    raise OSError(f"no usable directory for the listening-address lock among {', '.join(candidates)}")


def lock_name(host: str, port: int) -> str:
    return f"[{host}]:{port}.lock" if ":" in host else f"{host}:{port}.lock"


def holders(fd: int) -> list[int]:
    """Pids holding an flock on the file open as `fd`, from /proc/locks (Linux)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" ("->" marks a blocked waiter)
                if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
                    continue
                if parts[5] == want and parts[4].isdigit() and int(parts[4]) != os.getpid():
                    pids.append(int(parts[4]))
    except OSError:
        pass
    return sorted(set(pids))


def sweep(directory: str) -> int:
    """Remove the lock files of instances that died without releasing them (SIGKILL, a crash):
    each one nobody holds is locked, removed and closed, as a clean release does; acquire()'s
    check after locking makes that safe against an instance taking it at the same moment."""
    removed = 0
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".lock")]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                os.unlink(path)
                removed += 1
        except OSError:         # held (a live instance), or gone meanwhile
            pass
        finally:
            os.close(fd)
    return removed


class AddressLock:
    __slots__ = ("path", "fd", "shared")

    def __init__(self, path: str, fd: int, shared: bool) -> None:
        self.path = path
        self.fd: int | None = fd
        self.shared = shared

    @classmethod
    def acquire(cls, host: str, port: int, *, shared: bool = False, directory: str | None = None) -> AddressLock:
        """Lock host:port for this process; AddressLocked names the other instance's pid."""
        directory = directory or lock_dir()
        sweep(directory)
        path = os.path.join(directory, lock_name(host, port))
        for _ in range(100):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                msg = cls._refusal(fd, host, port, shared)
                os.close(fd)
                raise AddressLocked(msg) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:            # its holder released and removed it between our open and lock
                os.close(fd)
                continue
            if not shared:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            return cls(path, fd, shared)
        raise OSError(f"could not lock {path}: it keeps being replaced")

    @staticmethod
    def _refusal(fd: int, host: str, port: int, shared: bool) -> str:
        pids = holders(fd)
        if not pids:
            with contextlib.suppress(OSError, ValueError):
                pids = [int(os.pread(fd, 32, 0).split()[0])]
        if len(pids) > 1:
            who = f"other gateways (pids {', '.join(map(str, pids))}) share it"
        else:
            who = f"another gateway{f' (pid {pids[0]})' if pids else ''} serves it{' exclusively' if shared else ''}"
        return (f"cannot listen on {host}:{port}: {who} "
                f"(set GATEWAY_PORT to a free port, or {SHARED_HINT})")

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if not self.shared:
            with contextlib.suppress(OSError):
                os.unlink(self.path)        # still locked: see the module docstring
        os.close(fd)

    def __enter__(self) -> AddressLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
