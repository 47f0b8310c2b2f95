"""A pod's running time from what the runner sees of it: RunPod's whole-second ``startedAt`` and
``uptime``, the looks before and after, GraphQL's ``lastStatusChange`` second, and the runner's own
terminate. Pure arithmetic: no server."""

from __future__ import annotations

import pytest

from runner.runpod.client import PodDetails
from runner.runpod.timeline import PodTimeline


def looks(timeline: PodTimeline, true_start: float, times: list[float], started_at: float | None = None) -> None:
    for seen in times:
        timeline.running(started_at if started_at is not None else float(int(true_start)), seen, 0.44,
                         uptime=int(seen + 0.01 - true_start))


def test_the_start_is_narrowed_from_whole_seconds_by_uptime_at_each_look(runner_home):
    timeline = PodTimeline("p1")
    looks(timeline, 100.37, [100.9, 101.3, 101.55, 101.8, 102.1, 102.45, 102.7])
    assert timeline.started == pytest.approx(100.37, abs=0.1)


def test_a_preemption_ends_between_the_last_look_running_and_the_first_not(runner_home):
    timeline = PodTimeline("p2")
    looks(timeline, 50.2, [50.5 + 0.2 * i for i in range(20)])  # last running look at 54.3
    timeline.stopped(54.5)
    assert timeline.ended == pytest.approx(54.4)
    assert timeline.running_seconds() == pytest.approx(54.4 - 50.2, abs=0.15)


def test_last_status_change_narrows_the_end_to_its_second(runner_home):
    timeline = PodTimeline("p3")
    looks(timeline, 10.0, [10.5, 12.0])
    details = PodDetails("p3", "EXITED", "Exited by Runpod: Tue Dec 01 2026 12:31:47 GMT+0000 (Coordinated Universal "
                                         "Time)", "INTERRUPTABLE", 0.0)
    changed = details.changed_at
    assert details.interrupted_by_runpod and changed is not None and changed == int(changed)
    timeline = PodTimeline("p3")
    looks(timeline, changed - 30.0, [changed - 29.0, changed - 0.9])
    timeline.stopped(changed + 5.0, changed)  # seen stopped much later: the second RunPod gave wins
    assert changed <= timeline.ended <= changed + 1.0


def test_a_terminate_by_the_runner_ends_it_exactly_and_it_survives_a_restart(runner_home):
    timeline = PodTimeline("p4")
    looks(timeline, 7.0, [7.5, 9.0])
    timeline.save()
    again = PodTimeline.load("p4")
    again.terminated(11.25)
    again.save()
    assert PodTimeline.load("p4").ended == 11.25 and PodTimeline.load("p4").cost_per_hour == 0.44


def test_a_pod_started_again_opens_a_second_interval(runner_home):
    timeline = PodTimeline("p5")
    looks(timeline, 0.0, [0.5, 5.0])
    timeline.stopped(6.0)
    looks(timeline, 20.0, [20.5, 22.0], started_at=20.0)
    timeline.terminated(30.0)
    assert len(timeline.intervals) == 2
    assert timeline.running_seconds() == pytest.approx(5.5 + 10.0, abs=0.6)
