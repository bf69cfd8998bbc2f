"""The thread governor: threads follow the cores other processes leave free."""

from __future__ import annotations

from engine.llama.cpp.cpu_share import DROP_AFTER, SAMPLE_S, STALE_S, ThreadGovernor, machine_busy_seconds


class Machine:
    """Fake clocks: `run(seconds, others=…, ours=…)` advances time with that many cores busy."""

    def __init__(self) -> None:
        self.now = 0.0
        self.busy = 0.0
        self.ours = 0.0

    def run(self, seconds: float, *, others: float, ours: float) -> None:
        self.now += seconds
        self.busy += (others + ours) * seconds
        self.ours += ours * seconds


def governor(machine: Machine, max_threads: int, cores: int) -> ThreadGovernor:
    return ThreadGovernor(
        max_threads,
        cores=cores,
        clock=lambda: machine.now,
        machine_busy=lambda: machine.busy,
        own_busy=lambda: machine.ours,
    )


def test_an_idle_machine_gets_every_thread_and_a_busy_core_costs_one() -> None:
    m = Machine()
    g = governor(m, max_threads=2, cores=2)
    m.run(SAMPLE_S, others=0.05, ours=2.0)
    assert g.update() == 2
    m.run(SAMPLE_S, others=0.7, ours=1.3)  # a CPU-burning neighbour, fighting our two threads
    assert g.update() == 2  # one sample could be a burst
    m.run(SAMPLE_S, others=0.7, ours=1.3)
    assert g.update() == 1  # it stays: give it a core
    m.run(SAMPLE_S, others=1.0, ours=1.0)  # it keeps its core: stay at one
    assert g.update() == 1
    m.run(SAMPLE_S, others=0.0, ours=1.0)  # it has gone
    assert g.update() == 2


def test_the_count_stays_between_one_and_the_maximum_and_is_measured_once_per_interval() -> None:
    m = Machine()
    g = governor(m, max_threads=6, cores=8)
    m.run(SAMPLE_S, others=0.0, ours=6.0)
    assert g.update() == 6  # never above the configured maximum
    for _ in range(DROP_AFTER):
        m.run(SAMPLE_S, others=8.0, ours=0.5)  # everything busy
        g.update()
    assert g.threads == 1  # never below one
    m.run(SAMPLE_S / 10, others=0.0, ours=6.0)
    assert g.update() == 1  # not re-measured yet
    m.run(SAMPLE_S, others=3.0, ours=5.0)
    assert g.update() == 5


def test_after_an_idle_gap_the_old_window_is_dropped() -> None:
    """Another process's burst while the engine was idle says nothing about the next request."""
    m = Machine()
    g = governor(m, max_threads=2, cores=2)
    for _ in range(DROP_AFTER):
        m.run(SAMPLE_S, others=1.0, ours=1.0)
        g.update()
    assert g.threads == 1
    m.run(STALE_S * 3, others=2.0, ours=0.0)  # idle here, busy elsewhere
    assert g.update() == 2  # a fresh start
    m.run(SAMPLE_S, others=0.0, ours=2.0)
    assert g.update() == 2


def test_a_single_burst_costs_no_thread_and_a_lasting_neighbour_gets_the_milder_count() -> None:
    m = Machine()
    g = governor(m, max_threads=4, cores=4)
    m.run(SAMPLE_S, others=3.0, ours=1.0)  # a client's burst as 8 requests arrive
    assert g.update() == 4
    m.run(SAMPLE_S, others=0.2, ours=3.8)  # gone
    assert g.update() == 4
    m.run(SAMPLE_S, others=3.0, ours=1.0)  # a neighbour that stays, less busy in its second sample
    assert g.update() == 4
    m.run(SAMPLE_S, others=2.0, ours=2.0)
    assert g.update() == 2


def test_without_proc_stat_the_count_stays_fixed() -> None:
    g = ThreadGovernor(4, cores=4, machine_busy=lambda: None)
    assert g.update() == 4


def test_this_machine_reports_its_busy_time() -> None:
    first = machine_busy_seconds()
    assert first is not None and first > 0
