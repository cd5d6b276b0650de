"""Servers forked from one warm launch pad (sandbox/zygote.py) share nothing: not with each other
inside an evaluation (A, B, C), not with the servers of later evaluations the same launch pad
serves, and not with the launch pad itself. Real bubblewrap, the diagnostics off.
"""

import uuid

import pytest

import helpers
from archlab.sandbox import launch, runner, zygote
from helpers import mixer

pytestmark = pytest.mark.e2e

OFF = {"skip_static_checks": True}
MARK = f"archlab-pad-{uuid.uuid4().hex[:8]}"

# Every place a file could be left: each mount point, the usual writable directories, the cwd.
LEAVE_AND_LOOK = f"""
import os
places = {{"/", "/tmp", "/var/tmp", "/dev/shm", "/dev", "/etc", os.getcwd(), os.environ.get("HOME", "/")}}
for line in open("/proc/self/mountinfo"):
    places.add(line.split()[4])
found = [p for p in places if os.path.exists(os.path.join(p, "{MARK}"))]
if found:
    raise RuntimeError(f"an earlier server left files in {{sorted(found)}}")
for p in places:
    try:
        with open(os.path.join(p, "{MARK}"), "w") as f:
            f.write("x")
    except OSError:
        pass
"""

# Signal, read and write every other process this server can see in /proc (the launch pad's PID
# namespace numbers them: the launch pad, and the bridges and inits of its servers).
REACH_OUT = """
import os, signal
me = os.readlink("/proc/self")
reached = []
for pid in [p for p in os.listdir("/proc") if p.isdigit() and p != me]:
    for what, attempt in (("mem", lambda: open(f"/proc/{pid}/mem", "r+b").close()),
                          ("environ", lambda: open(f"/proc/{pid}/environ", "rb").read(1)),
                          ("root", lambda: os.listdir(f"/proc/{pid}/root/"))):
        try:
            attempt()
            reached.append((pid, what))
        except OSError:
            pass
    if int(pid) not in (1, os.getpid()):
        try:
            os.kill(int(pid), signal.SIGKILL)
            reached.append((pid, "kill"))
        except OSError:
            pass
if reached:
    raise RuntimeError(f"reached other processes: {reached}")
"""


@pytest.fixture(autouse=True)
def isolating_launcher():
    lx = launch.launcher()
    assert lx.kind == "bwrap" and lx.facts.get("isolates"), lx.facts  # else these tests would prove nothing
    zygote.close_all()  # an earlier test's evaluations side by side leave more than one launch pad idle


def pad_pid() -> int:
    assert len(zygote._idle) == 1, zygote._idle
    return zygote._idle[0].host_pid()


def test_one_launch_pad_serves_every_evaluation_and_scores_do_not_change():
    first = runner.evaluate(mixer(), "micro", threads=1, **OFF)
    pad = pad_pid()
    second = runner.evaluate(mixer(), "micro", threads=1, **OFF)
    assert first.ok and second.ok, (first, second)
    assert pad_pid() == pad
    assert second.metrics["val_loss"] == first.metrics["val_loss"]


def test_nothing_a_server_writes_reaches_another_server():
    """A, B and C of one evaluation, then the servers of a second evaluation from the same launch
    pad: each looks for what the earlier ones wrote wherever they could."""
    source = mixer(top=LEAVE_AND_LOOK)
    for _ in range(2):
        result = runner.evaluate(source, "micro", threads=1, **OFF)
        assert result.ok, result


def test_a_server_cannot_reach_its_launch_pad_or_the_other_servers():
    source = mixer(top=REACH_OUT)
    pad = (runner.evaluate(mixer(), "check", threads=1, **OFF), pad_pid())[1]
    result = runner.evaluate(source, "micro", threads=1, **OFF)
    assert result.ok, result
    assert helpers.alive(pad) and pad_pid() == pad


def test_without_nested_namespaces_each_server_gets_a_launch_pad_of_its_own(monkeypatch):
    isolated = runner.evaluate(mixer(), "micro", threads=1, **OFF)
    monkeypatch.setitem(launch.launcher().facts, "isolates", False)
    pooled = list(zygote._idle)
    alone = runner.evaluate(mixer(top=LEAVE_AND_LOOK), "micro", threads=1, **OFF)
    assert alone.ok, alone
    assert zygote._idle == pooled  # no launch pad was taken from the pool or put back
    assert runner.evaluate(mixer(), "micro", threads=1, **OFF).metrics["val_loss"] == isolated.metrics["val_loss"]


def test_out_of_memory_takes_the_server_not_the_launch_pad():
    """A candidate that exhausts the machine's memory is the OOM killer's first choice (a killed launch
    pad would stop the run)."""
    source = mixer(
        top="""
        score = open("/proc/self/oom_score_adj").read().strip()
        if score != "1000":
            raise RuntimeError(f"oom_score_adj {score}")
        """
    )
    result = runner.evaluate(source, "check", threads=1, **OFF)
    assert result.ok, result
