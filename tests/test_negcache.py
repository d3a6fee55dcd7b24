"""m2msec.negcache.RefusalMemory: the bounded negative cache of the Targets' remote key sources."""

from __future__ import annotations

from m2msec.negcache import RefusalMemory


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_refusals_lapse_and_can_be_forgotten() -> None:
    clock = Clock()
    m: RefusalMemory[str] = RefusalMemory(monotonic=clock)
    m.refuse("a", 5)
    assert m.recent("a") and not m.recent("b")
    clock.t += 4.9
    assert m.recent("a")
    clock.t += 0.2
    assert not m.recent("a")  # lapsed
    m.refuse("a", 5)
    m.forget("a")
    assert not m.recent("a")
    m.refuse(("kid", 24), 1)
    assert m.recent(("kid", 24)) and not m.recent(("kid", 25))
    m.clear()
    assert len(m) == 0


def test_the_memory_is_bounded_lapsed_first_then_oldest() -> None:
    clock = Clock()
    m: RefusalMemory[int] = RefusalMemory(max_entries=3, monotonic=clock)
    m.refuse(1, 1)
    m.refuse(2, 100)
    m.refuse(3, 100)
    clock.t += 2  # 1 has lapsed
    m.refuse(4, 100)
    assert len(m) == 3 and not m.recent(1) and all(m.recent(k) for k in (2, 3, 4))
    m.refuse(5, 100)  # nothing lapsed: the oldest (2) goes
    assert len(m) == 3 and not m.recent(2) and all(m.recent(k) for k in (3, 4, 5))
