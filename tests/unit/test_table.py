"""The instance table (csrc/ff_table.c): LIFO stacks, counts, the transition table."""

from __future__ import annotations

import pytest

from fastfaas import _native as n


def test_acquire_is_lifo_and_warm_before_spare() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    a, b, s = t.add(slot), t.add(slot), t.add(slot)
    t.release(s, 1.0, n.KIND_SPARE)
    t.release(a, 2.0)
    t.release(b, 3.0)
    assert t.acquire(slot) == (b, n.KIND_WARM)
    assert t.acquire(slot) == (a, n.KIND_WARM)
    assert t.acquire(slot) == (s, n.KIND_SPARE)
    assert t.acquire(slot) is None
    assert t.count(slot, n.STATE_BUSY) == 3


def test_slots_are_separate() -> None:
    t = n.InstanceTable()
    one, two = t.new_slot(), t.new_slot()
    i = t.add(one)
    t.release(i, 0.0)
    assert t.acquire(two) is None
    assert t.acquire(one) == (i, n.KIND_WARM)


def test_counts_follow_states() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    ids = [t.add(slot) for _ in range(5)]
    assert t.count(slot, n.STATE_SPAWNING) == 5
    for i in ids[:3]:
        t.release(i, 0.0)
    t.release(ids[3], 0.0, n.KIND_SPARE)
    assert t.idle(slot, n.KIND_WARM) == 3
    assert t.idle(slot, n.KIND_SPARE) == 1
    assert t.count(slot, n.STATE_IDLE) == 4
    t.set_state(ids[4], n.STATE_DEAD)
    assert t.count(slot, n.STATE_SPAWNING) == 0
    assert t.count(slot, n.STATE_DEAD) == 1


def test_illegal_transition_raises() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    i = t.add(slot)
    t.set_state(i, n.STATE_DEAD)
    with pytest.raises(ValueError, match="illegal transition dead -> idle"):
        t.set_state(i, n.STATE_IDLE)
    assert not n.InstanceTable.transition_ok(n.STATE_DRAINING, n.STATE_IDLE)
    assert n.InstanceTable.transition_ok(n.STATE_SPAWNING, n.STATE_BUSY)


def test_pop_expired_takes_the_least_recently_used_first() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    old, mid, new = t.add(slot), t.add(slot), t.add(slot)
    t.release(old, 1.0)
    t.release(mid, 2.0)
    t.release(new, 3.0)
    assert t.pop_expired(slot, n.KIND_WARM, 2.5) == old
    assert t.pop_expired(slot, n.KIND_WARM, 2.5) == mid
    assert t.pop_expired(slot, n.KIND_WARM, 2.5) is None
    assert t.state(old) == n.STATE_DRAINING
    assert t.acquire(slot) == (new, n.KIND_WARM)


def test_an_idle_instance_removed_from_the_middle_keeps_the_stack_whole() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    ids = [t.add(slot) for _ in range(3)]
    for k, i in enumerate(ids):
        t.release(i, float(k))
    t.set_state(ids[1], n.STATE_DEAD)
    assert t.acquire(slot) == (ids[2], n.KIND_WARM)
    assert t.acquire(slot) == (ids[0], n.KIND_WARM)
    assert t.acquire(slot) is None


def test_ids_are_reused_after_free_and_the_table_grows() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    ids = [t.add(slot) for _ in range(1000)]
    assert len(set(ids)) == 1000
    t.set_state(ids[7], n.STATE_DEAD)
    t.set_state(ids[7], n.STATE_FREE)
    assert t.add(slot) == ids[7]


def test_a_slot_with_live_instances_cannot_be_released() -> None:
    t = n.InstanceTable()
    slot = t.new_slot()
    i = t.add(slot)
    with pytest.raises(ValueError, match="live instances"):
        t.release_slot(slot)
    t.set_state(i, n.STATE_DEAD)
    t.release_slot(slot)
    with pytest.raises(ValueError):
        t.add(slot)
