"""Capacity policy, under trio's autojump clock (no processes here)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from fastfaas import _native as n
from fastfaas.runtime import policy


def test_reap_tick_is_a_quarter_of_the_shortest_timeout_within_bounds() -> None:
    assert policy.reap_tick([60, 300]) == policy.MAX_TICK_S
    assert policy.reap_tick([0.4, 300]) == 0.1
    assert policy.reap_tick([0.001]) == policy.MIN_TICK_S
    assert policy.reap_tick([]) == policy.MAX_TICK_S


def test_zygote_expiry_ignores_spares_but_not_warm_or_busy() -> None:
    kw = dict(last_used=0.0, now=10.0, zygote_idle_timeout_s=5.0)
    assert policy.zygote_expired(**kw, busy=0, warm=0)
    assert not policy.zygote_expired(**kw, busy=1, warm=0)
    assert not policy.zygote_expired(**kw, busy=0, warm=1)
    assert not policy.zygote_expired(last_used=6.0, now=10.0, zygote_idle_timeout_s=5.0,
                                     busy=0, warm=0)


def test_deficits() -> None:
    assert policy.spare_deficit(target=1, idle_spares=0, spawning=0) == 1
    assert policy.spare_deficit(target=1, idle_spares=0, spawning=1) == 0
    assert policy.spare_deficit(target=3, idle_spares=5, spawning=0) == 0
    assert policy.spare_target(prewarm=4, spares=1) == 4
    assert policy.pool_deficit(target=2, ready=1, forking=0) == 1


async def test_instances_expire_after_their_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    table = n.InstanceTable()
    slot = table.new_slot()
    first, second = table.add(slot), table.add(slot)
    table.release(first, trio.current_time())
    await trio.sleep(30)
    table.release(second, trio.current_time())
    reaped: list[tuple[float, int]] = []
    start = trio.current_time()
    while len(reaped) < 2:
        await trio.sleep(policy.reap_tick([60]))
        now = trio.current_time()
        reaped += [(now - start, i) for i in policy.expired_instances(table, slot, now, 60)]
    (t_first, id_first), (t_second, id_second) = reaped
    assert id_first == first and id_second == second
    assert 30 <= t_first <= 30 + policy.MAX_TICK_S
    assert 60 <= t_second <= 60 + policy.MAX_TICK_S


def test_deadlines_expire_in_order_and_finished_ones_never() -> None:
    d = policy.Deadlines()
    a = d.push(5.0, "a")
    d.push(3.0, "b")
    c = d.push(4.0, "c")
    assert d.next_deadline() == 3.0
    c.finish()
    assert d.expired(4.5) == ["b"]
    assert d.next_deadline() == 5.0
    assert d.expired(4.9) == []
    a.finish()
    assert d.next_deadline() is None
    assert d.expired(100.0) == []
    assert len(d) == 0


async def test_a_deadline_watcher_fires_at_each_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The watcher loop of the Runtime, on its own: park until the earliest
    deadline, wake early when an earlier one arrives."""
    d = policy.Deadlines()
    lot = trio.lowlevel.ParkingLot()
    fired: list[tuple[str, float]] = []
    start = trio.current_time()

    async def watch() -> None:
        while True:
            nxt = d.next_deadline()
            with trio.move_on_at(nxt if nxt is not None else float("inf")):
                await lot.park()
                continue
            fired.extend((k, trio.current_time() - start) for k in d.expired(trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        d.push(start + 10, "slow")
        lot.unpark_all()
        await trio.sleep(1)
        d.push(start + 3, "fast")  # earlier than what the watcher sleeps for
        lot.unpark_all()
        done = d.push(start + 5, "finished in time")
        await trio.sleep(3)  # t = 4: finished before its deadline at 5
        done.finish()
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert fired == [("fast", 3.0), ("slow", 10.0)]


def test_finished_deadlines_do_not_pile_up() -> None:
    """Under load with a long timeout, finished entries are compacted away as
    new ones arrive, not left for the watcher to pop all at once."""
    d = policy.Deadlines()
    keep = d.push(900.0, "long-running")
    for i in range(100_000):
        d.push(1.0 + i * 1e-6, i).finish()
    assert len(d) == 1
    assert len(d._heap) <= 200  # bounded by twice the live entries, plus slack
    assert d.next_deadline() == 900.0
    keep.finish()
    assert d.next_deadline() is None


def test_concurrency_limits_share_the_unreserved_pool() -> None:
    limits = policy.ConcurrencyLimits(10)
    limits.set_reservation("r", 4)
    assert limits.unreserved == 6
    for _ in range(6):
        assert limits.try_acquire("a", None) is None
    refused = limits.try_acquire("b", None)
    assert refused is not None and "concurrency limit (6" in refused
    # The reservation is held for r: the others cannot take it...
    for _ in range(4):
        assert limits.try_acquire("r", None) is None
    # ...and it is also r's cap.
    refused = limits.try_acquire("r", None)
    assert refused is not None and "reserved_concurrency (4)" in refused
    limits.release("a")
    assert limits.try_acquire("b", None) is None
    assert limits.statistics() == {"limit": 10, "reserved": 4, "unreserved_in_use": 6,
                                   "in_flight": 10}


def test_max_concurrency_caps_one_function() -> None:
    limits = policy.ConcurrencyLimits(100)
    assert limits.try_acquire("f", 2) is None
    assert limits.try_acquire("f", 2) is None
    refused = limits.try_acquire("f", 2)
    assert refused is not None and "max_concurrency (2)" in refused
    limits.release("f")
    assert limits.try_acquire("f", 2) is None
    assert limits.in_flight("f") == 2


def test_reservations_cannot_exceed_the_limit() -> None:
    limits = policy.ConcurrencyLimits(10)
    limits.set_reservation("a", 6)
    why = limits.check_reservation("b", 5)
    assert why is not None and "limit is 10" in why and "6 is reserved" in why
    with pytest.raises(ValueError):
        limits.set_reservation("b", 5)
    assert limits.check_reservation("a", 10) is None  # a's own share does not count
    limits.set_reservation("b", 4)
    assert limits.unreserved == 0


def test_a_reservation_changed_with_calls_in_flight_keeps_the_counts_right() -> None:
    limits = policy.ConcurrencyLimits(10)
    for _ in range(3):
        assert limits.try_acquire("f", None) is None
    limits.set_reservation("f", 5)  # its three calls move out of the shared pool
    assert limits.statistics()["unreserved_in_use"] == 0
    for _ in range(5):
        assert limits.try_acquire("g", None) is None
    limits.forget("f")  # and back
    assert limits.statistics()["unreserved_in_use"] == 8
    for _ in range(3):
        limits.release("f")
    for _ in range(5):
        limits.release("g")
    assert limits.statistics() == {"limit": 10, "reserved": 0, "unreserved_in_use": 0,
                                   "in_flight": 0}
    with pytest.raises(RuntimeError):
        limits.release("f")


def test_spares_follow_recent_demand_for_new_instances() -> None:
    sizer = policy.SpareSizer(window_s=5.0, factor=0.5, max_spares=4)
    assert sizer.target(0.0, base=1) == 1  # nothing needed yet: the base
    for t in (1.0, 1.1, 1.2):
        sizer.note_new_instance(t)
    assert sizer.target(1.2, base=1) == 1 + 2  # ceil(3 * 0.5)
    for t in (2.0, 2.1, 2.2, 2.3, 2.4, 2.5):
        sizer.note_new_instance(t)
    assert sizer.target(2.5, base=1) == 4  # capped
    assert sizer.target(6.15, base=1) == 1 + 3  # the first three left the window
    assert sizer.target(7.6, base=1) == 1  # steady again: back to the base
    assert sizer.target(7.6, base=3) == 3  # prewarm is the floor


def test_spare_sizer_memory_is_bounded_under_a_flood() -> None:
    sizer = policy.SpareSizer(window_s=60.0, factor=0.5, max_spares=16)
    for i in range(100_000):
        sizer.note_new_instance(i * 1e-4)
    assert len(sizer._needs) <= 4 * 16 / 0.5
    assert sizer.target(10.0, base=1) == 16


def test_a_prewarmed_zygote_is_never_reaped_for_idleness() -> None:
    args = {"last_used": 0.0, "now": 1e6, "zygote_idle_timeout_s": 300, "busy": 0, "warm": 0}
    assert policy.zygote_expired(**args)
    assert not policy.zygote_expired(**args, prewarm=2)


def test_the_warming_pool_grows_with_claims_and_shrinks_back() -> None:
    sizer = policy.PoolSizer(2, 5, window_s=10.0, grow_at=2.0, shrink_at=0.5, step_s=1.0)
    assert sizer.target(0.0) == 2
    for i in range(5):  # 5 claims > 2 * 2
        sizer.note_claim(0.1 + i * 0.01)
    assert sizer.target(0.2) == 3
    assert sizer.target(0.5) == 3  # one step per second at most
    for i in range(3):  # 8 claims > 2 * 3
        sizer.note_claim(1.0 + i * 0.01)
    assert sizer.target(1.3) == 4
    for i in range(20):  # a flood: still one step a second, capped at 5
        sizer.note_claim(2.0 + i * 0.01)
    assert [sizer.target(t) for t in (2.5, 3.5, 4.5)] == [5, 5, 5]
    # Between shrink_at and grow_at nothing moves (hysteresis).
    assert sizer.recent_claims(11.5) == 20 and sizer.target(11.5) == 5
    # The window empties: down one step a second to the minimum, no further.
    assert [sizer.target(t) for t in (12.6, 13.6, 14.6, 15.6, 16.6)] == [4, 3, 2, 2, 2]


def test_pool_sizer_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        policy.PoolSizer(3, 2)
    with pytest.raises(ValueError):
        policy.PoolSizer(1, 2, grow_at=1.0, shrink_at=1.0)


def test_frequency_class_promotes_on_rate_or_burst_with_hysteresis() -> None:
    fc = policy.FrequencyClass(window_s=10.0, promote_per_s=1.0, demote_per_s=0.2,
                               burst_in_flight=2)
    assert not fc.frequent
    for t in range(9):  # 9 calls in 10 s: below 1/s
        assert not fc.note_call(float(t), in_flight=1)
    assert fc.note_call(9.0, in_flight=1)  # the 10th: 1/s, promoted
    # Between the thresholds it stays frequent (hysteresis): 0.5/s, then 0.2/s...
    assert fc.update(14.5, in_flight=0)
    assert fc.update(17.5, in_flight=0)
    # ...and with calls in flight even below the lower one (0.1/s here)...
    assert fc.update(18.5, in_flight=2)
    # ...and within a window of the promotion (at 9)...
    assert fc.update(18.5, in_flight=1)
    # ...but not otherwise.
    assert not fc.update(19.5, in_flight=1)
    # A burst promotes at once, whatever the rate.
    assert fc.note_call(100.0, in_flight=2)


def test_a_new_function_starts_frequent_and_is_demoted_after_a_quiet_window() -> None:
    fc = policy.FrequencyClass(window_s=10.0, frequent=True, since=100.0)
    assert fc.update(105.0, in_flight=0)  # quiet, but not for a whole window yet
    assert not fc.update(110.0, in_flight=0)


def test_frequency_class_memory_is_bounded() -> None:
    fc = policy.FrequencyClass(window_s=10.0, promote_per_s=1.0)
    for i in range(100_000):
        fc.note_call(i * 1e-5, in_flight=1)
    assert len(fc._calls) <= 40


def test_the_clock_reader_reads_trios_own_clock_in_c() -> None:
    """Under trio's SystemClock (a server's), `clock_reader` reads it without a
    Python call, and gives what trio.current_time() gives at that moment."""

    async def main() -> None:
        clock = trio.lowlevel.current_clock()
        now = n.clock_reader(clock)
        assert isinstance(now, n.OffsetClock)
        assert now.offset == clock.offset
        for _ in range(1000):
            before = trio.current_time()
            read = now()
            assert before <= read <= trio.current_time()

    trio.run(main)


async def test_the_clock_reader_leaves_another_clock_its_own_method(
    autojump_clock: trio.testing.MockClock,
) -> None:
    now = n.clock_reader(trio.lowlevel.current_clock())
    assert not isinstance(now, n.OffsetClock)
    start = now()
    await trio.sleep(5)
    assert now() == start + 5 == trio.current_time()
