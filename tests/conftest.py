"""Shared fixtures: a CLI runner in a child process, fresh run directories and one shared
micro-tier run that the store and CLI tests read (and never modify)."""

from pathlib import Path

import pytest

import helpers


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
    proc = helpers.cli("run", run, "--tier", "micro", "--max-nodes", 5, "--param-ratio", "0.5",
                       "--threads", helpers.THREADS, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """In-process tensor work on one thread: steady timings on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
