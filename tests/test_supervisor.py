"""Process supervision: backoff decisions without a clock, real children with an injected one."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from federation._state import alive
from federation._supervisor import ProcessSpec, RestartPolicy, Supervisor, SupervisorError

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sh(tmp_path: Path, name: str, script: str, **env: str) -> ProcessSpec:
    return ProcessSpec(name, ("sh", "-c", script), tmp_path / "logs" / f"{name}.log", {**ENV, **env})


def wait_for(predicate, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("failures, delay", [
    (0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (10, 30.0), (11, None),
])
def test_restart_delay_doubles_up_to_the_maximum_then_gives_up(failures: int, delay: float | None) -> None:
    assert RestartPolicy().delay(failures) == delay


@pytest.mark.parametrize("failures, uptime, after", [(0, 0.1, 1), (4, 9.9, 5), (4, 10.0, 1), (9, 60.0, 1)])
def test_a_child_that_ran_long_enough_starts_a_fresh_series(failures: int, uptime: float, after: int) -> None:
    assert RestartPolicy().failures_after(failures, uptime) == after


def test_policy_never_gives_up_without_a_failure_bound() -> None:
    assert RestartPolicy(max_failures=None, maximum=4.0).delay(1000) == 4.0


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 5, "maximum": 1}, {"multiplier": 0.5}])
def test_policy_out_of_range_is_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="restart policy out of range"):
        RestartPolicy(**kwargs)


def test_exited_child_is_restarted_after_its_backoff_by_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock)
    child = sup.start(sh(tmp_path, "crash", "echo run $$; exit 3"))
    first = child.pid
    wait_for(lambda: sup.poll() != [])
    assert (child.state, child.exit_code, child.failures, child.restart_at) == ("backoff", 3, 1, 1000.5)
    clock.now = 1000.4
    assert sup.poll() == [] and child.pid == first
    clock.now = 1000.5
    assert sup.poll() == [child]
    assert child.state == "running" and child.restarts == 1 and child.pid != first
    wait_for(lambda: sup.poll() != [])
    assert (child.failures, child.restart_at) == (2, 1001.5)  # 1 s: the delay doubled
    log = (tmp_path / "logs" / "crash.log").read_text()
    assert log.count("starting: sh -c echo run $$; exit 3") == 2
    assert f"run {first}\n" in log


def test_child_gets_exactly_the_environment_of_its_spec(tmp_path: Path) -> None:
    sup = Supervisor()
    sup.start(sh(tmp_path, "env", "echo \"foo=$FOO home=${HOME:-unset}\"", FOO="bar"))
    wait_for(lambda: sup.poll() != [])
    assert "foo=bar home=unset\n" in (tmp_path / "logs" / "env.log").read_text()


def test_child_is_given_up_after_too_many_consecutive_failures(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = Supervisor(RestartPolicy(initial=1, max_failures=2), clock=clock)
    child = sup.start(sh(tmp_path, "bad", "exit 1"))
    for _ in range(2):
        wait_for(lambda: sup.poll() != [])
        assert child.state == "backoff" and child.restart_at is not None
        clock.now = child.restart_at
        assert sup.poll() == [child] and child.state == "running"
    wait_for(lambda: sup.poll() != [])
    assert (child.state, child.restarts, child.restart_at) == ("failed", 2, None)
    assert sup.next_deadline() is None


def test_missing_program_is_an_error_naming_the_child(tmp_path: Path) -> None:
    spec = ProcessSpec("ghost", ("/nonexistent/app",), tmp_path / "ghost.log", ENV)
    with pytest.raises(SupervisorError, match=r"^ghost: cannot start '/nonexistent/app': No such file or directory$"):
        Supervisor().start(spec)


def test_stop_terminates_gracefully_and_does_not_restart(tmp_path: Path) -> None:
    sup = Supervisor()
    child = sup.start(sh(tmp_path, "svc", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done"))
    time.sleep(0.2)
    started = time.monotonic()
    sup.stop(["svc"], grace=5)
    assert time.monotonic() - started < 2
    assert (child.state, child.exit_code, child.proc) == ("stopped", 0, None)
    assert sup.poll() == [] and child.restart_at is None
    assert "bye\n" in (tmp_path / "logs" / "svc.log").read_text()


def test_stop_kills_a_child_that_ignores_sigterm_after_the_grace_period(tmp_path: Path) -> None:
    sup = Supervisor()
    child = sup.start(sh(tmp_path, "stubborn", "trap '' TERM; while :; do sleep 0.05; done"))
    time.sleep(0.2)
    started = time.monotonic()
    sup.stop(["stubborn"], grace=0.5)
    assert 0.5 <= time.monotonic() - started < 3
    assert (child.state, child.exit_code) == ("stopped", -signal.SIGKILL)


def test_stop_reaches_the_whole_process_group(tmp_path: Path) -> None:
    sup = Supervisor()
    pidfile = tmp_path / "grandchild"
    sup.start(sh(tmp_path, "parent", f"sleep 30 & echo $! > {pidfile}; wait"))
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
    grandchild = int(pidfile.read_text())
    assert alive(grandchild)
    sup.stop(["parent"], grace=2)
    wait_for(lambda: not alive(grandchild))


def test_starting_a_running_name_twice_is_refused(tmp_path: Path) -> None:
    sup = Supervisor()
    child = sup.start(sh(tmp_path, "one", "sleep 5"))
    try:
        with pytest.raises(SupervisorError, match=rf"^one: already running as pid {child.pid}$"):
            sup.start(sh(tmp_path, "one", "sleep 5"))
    finally:
        sup.stop_all(grace=1)
    assert sup.running(["one"]) == []
    sup.remove("one")
    assert sup.children == {}
