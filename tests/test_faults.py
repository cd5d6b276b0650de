"""Disk and database faults: a full disk, a locked database, a corrupted git object, a deleted
log. Each must give a clear message (one line, no traceback) and lose nothing: the run
resumes afterwards and `archlab doctor` finds the store consistent.

They start from copies of the shared micro run (conftest.micro_run), whose children all fail
the parameter budget, so resuming it adds nodes in seconds without training.
"""

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import helpers
from archlab.commands.doctor import check
from archlab.web.app import create_app

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # runs (600 s bound each)


def copy_run(micro_run: Path, tmp_path: Path) -> Path:
    return helpers.copy_run(micro_run, tmp_path / "run")


def assert_resumes(run: Path, max_nodes: int) -> None:
    proc = helpers.cli("run", run, "--max-nodes", max_nodes, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = check(run)
    assert report.ok, report.as_json()
    with sqlite3.connect(run / "archlab.db") as db:
        assert [r[0] for r in db.execute("select id from nodes order by id")] == list(range(max_nodes))
        # children fail the parameter budget and nothing else: no fault was blamed on a candidate
        reasons = {r[0] for r in db.execute("select reason from nodes where id > 0")}
        assert reasons == {"params"}, reasons
        for node_id, attempts in db.execute("select id, attempts from nodes"):
            n = db.execute(
                "select count(*) from evaluations where node_id = ? and kind = 'search'", [node_id]
            ).fetchone()[0]
            assert n == attempts, (node_id, n, attempts)


def root_row(run: Path) -> tuple:
    with sqlite3.connect(run / "archlab.db") as db:
        return db.execute("select status, val_loss, metrics, commit_sha from nodes where id = 0").fetchone()


DISK_FULL = r"""
set -u
mount -t tmpfs -o size=256m tmpfs "$MNT"
cp -r "$SRC" "$MNT/run"
"$PY" -c "$ARCHLAB" run "$MNT/run" --max-nodes 8 --threads 1 > "$OUT/run1.out" 2> "$OUT/run1.err" &
pid=$!
# fill the disk as soon as the first new candidate is being evaluated
"$PY" - "$MNT/run/archlab.db" <<'EOF'
import sqlite3, sys, time
deadline = time.time() + 300
while time.time() < deadline:
    try:
        with sqlite3.connect(sys.argv[1], timeout=30) as db:
            if db.execute("select 1 from events where kind = 'evaluate' and node_id >= 5").fetchone():
                break
    except sqlite3.Error:
        pass
    time.sleep(0.1)
EOF
dd if=/dev/zero of="$MNT/fill" bs=1M 2> /dev/null
df -k "$MNT" > "$OUT/df"
wait $pid; echo $? > "$OUT/rc1"
"$PY" -c "$ARCHLAB" status "$MNT/run" > "$OUT/status.out" 2> "$OUT/status.err"; echo $? > "$OUT/rc_status"
rm "$MNT/fill"
cp -r "$MNT/run" "$OUT/run"
"""


def test_disk_full_stops_the_run_with_a_clear_message_and_loses_nothing(micro_run, tmp_path):
    """A real ENOSPC: the run's directory lives on a 256 MB tmpfs (in a private mount
    namespace) that is filled while a candidate is being evaluated."""
    mnt, out = tmp_path / "mnt", tmp_path / "out"
    mnt.mkdir(), out.mkdir()
    namespace = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    env = dict(
        helpers.cli_env(), MNT=str(mnt), SRC=str(micro_run), OUT=str(out), PY=sys.executable, ARCHLAB=helpers.CLI_CODE
    )
    proc = subprocess.run([*namespace, "bash", "-c", DISK_FULL], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (out / "df").read_text().split()[-3] == "0", (out / "df").read_text()  # the disk really was full

    stopped = subprocess.CompletedProcess(
        [], int((out / "rc1").read_text()), (out / "run1.out").read_text(), (out / "run1.err").read_text()
    )
    line = helpers.assert_user_error(stopped, code=1)
    assert "disk is full" in line, line
    # a reader on the full disk either works or says why not, in one line
    status = subprocess.CompletedProcess(
        [], int((out / "rc_status").read_text()), (out / "status.out").read_text(), (out / "status.err").read_text()
    )
    if status.returncode != 0:
        assert "disk is full" in helpers.assert_user_error(status, code=2)

    run = out / "run"
    assert root_row(run) == root_row(micro_run)
    assert_resumes(run, 8)


def test_a_locked_database_is_waited_for_then_reported_and_never_blocks_readers(micro_run, tmp_path):
    run = copy_run(micro_run, tmp_path)
    holder = sqlite3.connect(run / "archlab.db", isolation_level=None, check_same_thread=False)
    holder.execute("begin exclusive")  # another process holding the write lock (e.g. an open sqlite3 shell)
    try:
        status = helpers.cli("status", run)
        assert status.returncode == 0 and "node" in status.stdout, status.stderr
        started = time.monotonic()
        blocked = helpers.cli("run", run, "--max-nodes", 6, "--threads", helpers.THREADS)
        line = helpers.assert_user_error(blocked, code=1)
        assert "database is locked" in line and "another archlab process" in line, line
        assert time.monotonic() - started > 25  # it waited out the busy timeout first
    finally:
        holder.execute("rollback")
    # A lock held for a few seconds is simply waited for.
    holder.execute("begin exclusive")
    threading.Timer(4.0, lambda: holder.execute("rollback")).start()
    assert_resumes(run, 6)
    holder.close()


def test_a_corrupted_git_object_is_named_and_repaired_from_the_database_copy(micro_run, tmp_path):
    run = copy_run(micro_run, tmp_path)
    repo = run / "repo"
    original = subprocess.run(["git", "-C", repo, "show", "node-0:candidate.py"], capture_output=True, text=True).stdout
    blob = subprocess.run(
        ["git", "-C", repo, "rev-parse", "node-0:candidate.py"], capture_output=True, text=True
    ).stdout.strip()
    path = repo / ".git" / "objects" / blob[:2] / blob[2:]
    path.chmod(0o644)
    path.write_bytes(b"not a zlib stream")  # what a bad sector or a half-copied backup looks like

    line = helpers.assert_user_error(helpers.cli("show", run, 1))  # its diff reads the root's code
    assert "cannot be read" in line and "archlab doctor" in line, line
    line = helpers.assert_user_error(helpers.cli("run", run, "--max-nodes", 6, "--threads", helpers.THREADS))
    assert "cannot be read" in line, line
    assert root_row(run) == root_row(micro_run)

    found = helpers.cli("doctor", run)
    assert found.returncode == 1 and "node 0: its code cannot be read from git" in found.stdout, found.stdout
    repaired = helpers.cli("doctor", run, "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert (
        subprocess.run(["git", "-C", repo, "show", "node-0:candidate.py"], capture_output=True, text=True).stdout
        == original
    )
    assert subprocess.run(["git", "-C", repo, "fsck", "--no-dangling"], capture_output=True).returncode == 0
    assert helpers.cli("show", run, 1).returncode == 0
    assert_resumes(run, 6)


def test_a_deleted_log_is_reported_and_nothing_else_is_affected(micro_run, tmp_path):
    run = copy_run(micro_run, tmp_path)
    with sqlite3.connect(run / "archlab.db") as db:
        evaluation, log = db.execute("select id, log from evaluations where node_id = 0").fetchone()
    (run / log).unlink()

    assert helpers.cli("show", run, 0).returncode == 0
    report = check(run)
    assert report.ok and any("missing" in f.what and log in f.what for f in report.findings), report.as_json()

    from starlette.testclient import TestClient

    with TestClient(create_app(run), base_url="http://127.0.0.1") as client:
        response = client.get(f"/api/evaluation/{evaluation}/log")
        assert response.status_code == 404 and "is missing" in response.json()["error"], response.text
        assert client.get("/api/node/0").status_code == 200

    # A log deleted while its evaluation writes it: the evaluation is still recorded.
    proc = helpers.popen_cli("run", run, "--max-nodes", 7, "--threads", helpers.THREADS)
    target = run / "logs" / "node-5-0.log"
    deadline = time.monotonic() + 300
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    target.unlink(missing_ok=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    with sqlite3.connect(run / "archlab.db") as db:
        assert db.execute("select count(*) from evaluations where node_id = 5").fetchone()[0] == 1
    assert_resumes(run, 7)
