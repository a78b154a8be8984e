"""request.pyx's _plain_target, the fast path of every request's target: on arbitrary targets it
answers its contract (a Python model of it), and whenever it takes a target as plain, the full
normalization (wire.normalize_target) gives exactly what the fast path uses."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http.request import plain_target
from gateway.http.wire import TargetError, normalize_target

# Bytes that matter to either side, and a few that do not.
ALPHABET = [b"/", b".", b"?", b"#", b"%", b";", b"\\", b"a", b"b", b"2", b"F", b"=", b"&", b"~",
            b"\xe9", b"-", b"http://h", b"%2e", b"%2F", b"%5c"]
TARGETS = st.lists(st.sampled_from(ALPHABET), max_size=14).map(b"".join)


def model(url: bytes) -> int:
    if not url.startswith(b"/"):
        return -2
    if any(c in url for c in (b"#", b"%", b";", b"\\", b"/.", b"//")):
        return -2
    return url.find(b"?")


@settings(max_examples=3000, deadline=None)
@given(TARGETS)
def test_plain_target_agrees_with_its_model_and_with_the_full_normalization(url: bytes) -> None:
    q = plain_target(url)
    assert q == model(url), url
    if q != -2:
        path, query = (url, b"") if q == -1 else (url[:q], url[q + 1:])
        try:
            assert normalize_target(url) == (path, query, url, None), url
        except TargetError as exc:
            raise AssertionError(f"{url!r}: the fast path took a target the full one refuses") from exc


def test_long_targets_and_every_byte_value() -> None:
    for b in range(256):
        url = b"/x" + bytes([b]) + b"y" * 300
        assert plain_target(url) == model(url), b
    assert plain_target(b"/" + b"a/" * 2000 + b"?q=1") == 4001
