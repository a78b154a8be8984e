"""gateway/state/memory against a plain Python model: a hypothesis state machine and long seeded
walks of place / sync_holder / drop_holder / advance-time / writes. Invariants after every step:
verify() passes, no two objects overlap, every object's bytes survive, used + free + quarantined
== total, and the counters and names match the model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.state.layout import NAME_INLINE
from gateway.state.memory import SUPERVISOR, NodeMemory, SharedMemoryFull, block_size
from tests.support.node_memory import Clock, addr, unique_name, unlink_shm

LONG = "breaker/payments/http://payments.internal.svc.cluster.local:8080"

# ---------------------------------------------------------------- the model


NAMES = ["a", "breaker/s/http://x:1", "counter/requests/r/200", "limits/r/0",
         LONG, LONG[:-1] + "1", "z" * 200]
SIZES = [1, 64, 700, 768, 5000, 70_000, 150_000]
KINDS = ["", "breaker"]
HOLDERS = [0, 1, 2, SUPERVISOR]
GRACE = 10.0
CAP = 6


@dataclass
class Obj:
    size: int
    kind: str
    fill: int
    view: memoryview
    holders: set[int] = field(default_factory=set)
    freed_at: float | None = None


def _blocks(name: str, size: int) -> int:
    n = len(name.encode())
    return block_size(size) + (block_size(n) if n > NAME_INLINE else 0)


class MemoryModel(RuleBasedStateMachine):
    named = False
    report = True       # hypothesis events (--hypothesis-show-statistics)

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.seg_name = unique_name() if self.named else None
        if self.seg_name:
            self.mem = NodeMemory.create(250_000, self.seg_name, grace=GRACE, max_objects=CAP,
                                         clock=self.clock)
        else:
            self.mem = NodeMemory.private(250_000, grace=GRACE, max_objects=CAP, clock=self.clock)
        self.objs: dict[str, Obj] = {}
        self.fills = 0
        self.events: dict[str, int] = {}

    def seen(self, what: str) -> None:
        self.events[what] = self.events.get(what, 0) + 1
        if self.report:
            event(what)

    def _expire(self) -> None:
        for name in [n for n, o in self.objs.items()
                     if o.freed_at is not None and o.freed_at + GRACE <= self.clock.now]:
            self.objs.pop(name).view.release()
            self.seen("reclaimed after the grace")

    def _release(self, holder: int, keep: set[str]) -> list[str]:
        out = []
        for name, o in self.objs.items():
            if holder in o.holders and name not in keep:
                out.append(name)
                o.holders.discard(holder)
                if not o.holders:
                    o.freed_at = self.clock.now
        return sorted(out)

    @rule(data=st.data(), holder=st.sampled_from(HOLDERS))
    def place(self, data: st.DataObject, holder: int) -> None:
        # Mostly a name's usual layout (so objects are held, released and revived), sometimes
        # another one (refused while the name exists).
        name = data.draw(st.sampled_from(NAMES))
        usual = NAMES.index(name)
        size = data.draw(st.sampled_from([SIZES[usual]] * 6 + SIZES))
        kind = data.draw(st.sampled_from([KINDS[usual % 2]] * 6 + KINDS))
        self.do_place(name, size, kind, holder)

    def do_place(self, name: str, size: int, kind: str, holder: int) -> None:
        self._expire()
        o = self.objs.get(name)
        if o is not None and (o.size, o.kind) != (size, kind):
            with pytest.raises(ValueError, match="layout change"):
                self.mem.place(name, size, holder, kind=kind)
            self.seen("place: layout mismatch")
            return
        if o is None and len(self.objs) >= CAP:
            with pytest.raises(SharedMemoryFull, match="directory full"):
                self.mem.place(name, size, holder, kind=kind)
            self.seen("place: directory full")
            return
        try:
            view = self.mem.place(name, size, holder, kind=kind)
        except SharedMemoryFull as exc:
            assert o is None and "GATEWAY_SHM_SIZE" in str(exc)
            if len(name.encode()) <= NAME_INLINE:
                assert self.mem.stats()["largest_free"] < block_size(size)
            self.seen("place: segment full")
            return
        self.seen("place: new" if o is None else "place: revived" if o.freed_at is not None else "place: held")
        if o is None:
            assert bytes(view) == bytes(size), "a new object must be zeroed"
            self.fills += 1
            o = self.objs[name] = Obj(size, kind, self.fills % 255 + 1, view)
            view[:] = bytes([o.fill]) * size
        else:
            assert addr(view) == addr(o.view)
            view.release()
        o.holders.add(holder)
        o.freed_at = None

    @rule(holder=st.sampled_from(HOLDERS), keep=st.sets(st.sampled_from(NAMES)))
    def sync_holder(self, holder: int, keep: set[str]) -> None:
        self._expire()
        assert self.mem.sync_holder(holder, keep) == self._release(holder, keep)

    @rule(holder=st.sampled_from(HOLDERS))
    def drop_holder(self, holder: int) -> None:
        self._expire()
        assert self.mem.drop_holder(holder) == self._release(holder, set())

    @rule(dt=st.sampled_from([0.5, 3.0, 9.99, 10.0, 25.0]))
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        # Workers keep writing, also into quarantined objects (in-flight requests of an old runtime).
        if not self.objs:
            return
        name = data.draw(st.sampled_from(sorted(self.objs)))
        o = self.objs[name]
        self.fills += 1
        o.fill = self.fills % 255 + 1
        o.view[:] = bytes([o.fill]) * o.size

    @invariant()
    def consistent(self) -> None:
        self._expire()
        self.mem.verify()
        s = self.mem.stats()
        live = {n: o for n, o in self.objs.items() if o.freed_at is None}
        assert s["used"] + s["free"] + s["quarantined"] == s["total"]
        assert s["used"] == sum(_blocks(n, o.size) for n, o in live.items())
        assert s["quarantined"] == sum(_blocks(n, o.size) for n, o in self.objs.items() if n not in live)
        assert self.mem.names() == sorted(live)
        assert self.mem.names(quarantined=True) == sorted(self.objs)
        spans = []
        for name, o in self.objs.items():
            assert bytes(o.view) == bytes([o.fill]) * o.size, f"{name}'s bytes changed"
            info = self.mem.info(name)
            assert info is not None and info.holders == sum(1 << h for h in o.holders)
            spans.append((info.offset, info.offset + info.block))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in pairwise(spans)), "live objects overlap"

    def teardown(self) -> None:
        for o in self.objs.values():
            o.view.release()
        self.mem.close()
        if self.seg_name:
            unlink_shm(self.seg_name)


class NamedMemoryModel(MemoryModel):
    named = True


TestMemoryModelPrivate = MemoryModel.TestCase
TestMemoryModelPrivate.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestMemoryModelNamed = NamedMemoryModel.TestCase
TestMemoryModelNamed.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_long_random_walks_agree_with_the_model(seed: int) -> None:
    # The state machine's examples are short; these walks are long enough to fill the segment and
    # the directory, reclaim, reuse and revive many times, and prove they did.
    rnd = random.Random(seed)
    MemoryModel.report = False
    m = MemoryModel()
    try:
        for _ in range(1500):
            op = rnd.random()
            if op < 0.5:
                name = rnd.choice(NAMES)
                usual = NAMES.index(name)
                size = SIZES[usual] if rnd.random() < 0.7 else rnd.choice(SIZES)
                kind = KINDS[usual % 2] if rnd.random() < 0.9 else rnd.choice(KINDS)
                m.do_place(name, size, kind, rnd.choice(HOLDERS))
            elif op < 0.65:
                m._expire()
                keep = {n for n in NAMES if rnd.random() < 0.6}
                assert m.mem.sync_holder(h := rnd.choice(HOLDERS), keep) == m._release(h, keep)
            elif op < 0.7:
                m._expire()
                assert m.mem.drop_holder(h := rnd.choice(HOLDERS)) == m._release(h, set())
            elif op < 0.85:
                m.clock.now += rnd.choice([0.5, 3.0, 9.99, 10.0, 25.0])
            elif m.objs:
                o = m.objs[rnd.choice(sorted(m.objs))]
                o.fill = rnd.randrange(1, 256)
                o.view[:] = bytes([o.fill]) * o.size
            m.consistent()
    finally:
        MemoryModel.report = True
        m.teardown()
    for what in ("place: new", "place: held", "place: revived", "place: layout mismatch",
                 "place: segment full", "place: directory full", "reclaimed after the grace"):
        assert m.events.get(what, 0) >= 3, (what, m.events)
