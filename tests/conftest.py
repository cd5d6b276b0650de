"""Shared fixtures: a CLI runner in a child process, fresh run directories and the two trained
micro-tier runs that several modules read (and never modify); the markers that select a subset."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

import helpers

# Lessons are read from and written to $ARCHLAB_HOME (default ~/.archlab): never the real user's.
# Set before any fixture runs (the session's trained runs write lessons too); each test gets its own below.
os.environ["ARCHLAB_HOME"] = tempfile.mkdtemp(prefix="archlab-home-")
atexit.register(shutil.rmtree, os.environ["ARCHLAB_HOME"], True)

# Every test of these kinds is end-to-end too, so `pytest -m "not e2e"` is the whole unit layer.
SLOW_KINDS = ("chaos", "bench", "browser", "ray", "gpu")
# Fixtures that train a run: a test using one (directly or through another fixture) is end-to-end.
# (The first such test builds the run in its own time: 10-14 s on 2 busy cores, well inside 300 s.)
TRAINED_RUNS = {"micro_run", "review_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINED_RUNS & set(item.fixturenames) or any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def archlab_home(tmp_path_factory, monkeypatch) -> Path:
    """This test's own $ARCHLAB_HOME (its lessons store), inherited by every CLI child process."""
    home = tmp_path_factory.mktemp("archlab-home")
    monkeypatch.setenv("ARCHLAB_HOME", str(home))
    return home


@pytest.fixture
def cli():
    """cli(*args) -> CompletedProcess of `archlab ARGS...` run in a child process."""
    return helpers.cli


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A path for a new run (not created: `archlab run` creates it)."""
    return tmp_path / "run"


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory) -> Path:
    """A finished 5-node micro-tier run with a parameter budget of half the root's mixer, so
    that every child fails with reason params (whatever mutation the brain picks: none
    halves the parameter count) while the root is trained. Read-only for the tests that use
    it: copy it before changing anything."""
    run = tmp_path_factory.mktemp("shared") / "micro5"
    proc = helpers.cli(
        "run",
        run,
        "--tier",
        "micro",
        "--max-nodes",
        5,
        "--param-ratio",
        "0.5",
        "--threads",
        helpers.THREADS,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


@pytest.fixture
def run_copy(micro_run, tmp_path) -> Path:
    """A private copy of the shared micro run, free to change, corrupt or damage."""
    return helpers.copy_run(micro_run, tmp_path / "copy")


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> Path:
    """A finished 3-node micro-tier run whose two children trained (the default parameter
    budget), built once per test session and shared by the replay, fork, export, curves and web
    tests (which work on copies). Read-only: copy it before changing anything."""
    run = tmp_path_factory.mktemp("shared") / "review-run"
    proc = helpers.cli("run", run, "--tier", "micro", "--max-nodes", 3, "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nodes = helpers.node_rows(run)
    assert any(n["parent_id"] == 0 and n["status"] == "done" for n in nodes), nodes
    return run


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """In-process tensor work on one thread: steady timings on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
