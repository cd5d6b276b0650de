"""The command line, always in a child process: JSON output, exit codes, and one clear line
(never a traceback, never a changed database) for every user mistake."""

import json
import subprocess

import pytest
import typer

import helpers
from archlab.templates import render_root

NON_CAUSAL = """import torch
import torch.nn as nn


class Mixer(nn.Module):
    def __init__(self, d_model, n_heads, **kwargs):
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        return self.proj(x - x.mean(dim=1, keepdim=True))  # statistics over the whole sequence
"""


@pytest.fixture
def deltanet_file(tmp_path):
    path = tmp_path / "deltanet.py"
    path.write_text(render_root("deltanet"))
    return path


def one_json_object(stdout: str) -> dict:
    value = json.loads(stdout)  # raises on anything but exactly one JSON document
    assert isinstance(value, dict)
    return value


# -- check / eval ----------------------------------------------------------------------------------
@pytest.mark.e2e
def test_check_json_accepts_deltanet(cli, deltanet_file):
    proc = cli("check", deltanet_file, "--json", "--threads", helpers.THREADS)
    assert proc.returncode == 0, proc.stderr
    result = one_json_object(proc.stdout)
    assert {"ok", "reason", "metrics"} <= set(result)
    assert result["ok"] is True and result["reason"] is None
    assert result["metrics"]["mixer_params"] > 0


@pytest.mark.e2e
def test_check_json_rejects_a_non_causal_mixer(cli, tmp_path):
    path = tmp_path / "leaky.py"
    path.write_text(NON_CAUSAL)
    proc = cli("check", path, "--json", "--threads", helpers.THREADS)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    result = one_json_object(proc.stdout)
    assert result["ok"] is False and result["reason"] == "non_causal"
    assert isinstance(result["metrics"], dict)


def test_check_missing_file_is_a_usage_error(cli, tmp_path):
    proc = cli("check", tmp_path / "nope.py", "--json")
    line = helpers.assert_user_error(proc)
    assert "nope.py" in line
    assert proc.stdout == ""


@pytest.mark.e2e
def test_eval_micro_json(cli, deltanet_file):
    proc = cli("eval", deltanet_file, "--tier", "micro", "--json", "--threads", helpers.THREADS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = one_json_object(proc.stdout)
    assert result["ok"] is True
    m = result["metrics"]
    assert m["val_loss"] > 0 and m["val_bpb"] > m["val_loss"] and m["tokens_per_s"] > 0 and m["params"] > 0


def test_eval_unknown_tier_is_a_usage_error(cli, deltanet_file):
    line = helpers.assert_user_error(cli("eval", deltanet_file, "--tier", "bogus", "--json"))
    assert "bogus" in line


# -- status / show / traces / tree -------------------------------------------------------------------
def test_status_json(cli, micro_run):
    proc = cli("status", micro_run, "--json")
    assert proc.returncode == 0, proc.stderr
    facts = one_json_object(proc.stdout)
    rows = helpers.node_rows(micro_run)
    failed = [r for r in rows if r["status"] == "failed"]
    best = max((r for r in rows if r["status"] == "done"), key=lambda r: (r["fitness"], -r["id"]))
    assert facts["nodes"] == len(rows) == 5
    assert not (micro_run / "kernel-cache").exists(), (
        "a model server's caches stay in its private scratch (no kernel cache)"
    )
    assert facts["failed"] == len(failed) >= 1
    assert facts["done"] == len(rows) - len(failed)
    assert facts["best"]["id"] == best["id"] and facts["best"]["fitness"] == best["fitness"]
    assert sum(facts["failure_reasons"].values()) == len(failed)


def test_status_table(cli, micro_run):
    proc = cli("status", micro_run)
    assert proc.returncode == 0, proc.stderr
    assert "nodes" in proc.stdout and "5" in proc.stdout and "best" in proc.stdout


@pytest.mark.e2e
def test_status_of_a_run_whose_root_failed(cli, run_dir, tmp_path):
    code = render_root("deltanet")
    mixer = code.index("class Mixer")
    forward = code.index("    def forward(self, x", mixer)
    body = code.index("\n", forward) + 1
    broken = tmp_path / "broken_root.py"
    broken.write_text(code[:body] + "        raise RuntimeError('broken on purpose')\n" + code[body:])
    message = helpers.assert_user_error(cli("run", run_dir, "--root", broken, "--tier", "micro", "--max-nodes", 2))
    assert "root candidate was rejected" in message and "start a new run directory" in message
    table = cli("status", run_dir)
    assert table.returncode == 0, table.stderr
    assert "node 0 failed (" in " ".join(table.stdout.split())
    root = json.loads(cli("status", run_dir, "--json").stdout)["root"]
    assert root["status"] == "failed" and root["reason"] and root["fitness"] is None


def test_status_of_a_missing_directory(cli, tmp_path):
    line = helpers.assert_user_error(cli("status", tmp_path / "missing"))
    assert "missing" in line
    assert not (tmp_path / "missing").exists()


def test_status_of_a_directory_that_is_not_a_run(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    before = sorted(p.name for p in tmp_path.iterdir())
    helpers.assert_user_error(cli("status", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a failed status must not create files"


CORRUPT = {
    "garbage_bytes": b"\xff\xfe\x00\x81\x9c garbage \x00\x00 [[[",
    "bad_toml": b"max_nodes = = 3\n[[\n",
    "wrong_type": b'max_nodes = "x"\n',
}


@pytest.mark.parametrize("command", ["status", "run"])
@pytest.mark.parametrize("config", list(CORRUPT), ids=list(CORRUPT))
def test_corrupt_config_is_one_line_and_leaves_the_database_alone(cli, run_copy, command, config):
    (run_copy / "archlab.toml").write_bytes(CORRUPT[config])
    before = helpers.db_snapshot(run_copy)
    tags = helpers.git(run_copy, "tag", "--list")
    args = ("status", run_copy, "--json") if command == "status" else ("run", run_copy, "--tier", "micro")
    proc = cli(*args)
    assert helpers.db_snapshot(run_copy) == before
    assert helpers.git(run_copy, "tag", "--list") == tags
    assert (run_copy / "archlab.toml").read_bytes() == CORRUPT[config]
    line = helpers.assert_user_error(proc)
    assert "archlab.toml" in line


def test_show_json_of_one_node(cli, micro_run):
    proc = cli("show", micro_run, 1, "--json")
    assert proc.returncode == 0, proc.stderr
    facts = one_json_object(proc.stdout)
    row = helpers.node_rows(micro_run)[1]
    assert (
        facts["status"] == row["status"] and facts["operator"] == row["operator"] and facts["reason"] == row["reason"]
    )
    assert facts["metrics_table"]["val_loss"][2] == helpers.node_rows(micro_run)[0]["val_loss"]  # the root column


def test_show_unknown_node(cli, micro_run):
    line = helpers.assert_user_error(cli("show", micro_run, 999))
    assert "999" in line


def test_traces_json(cli, micro_run):
    proc = cli("traces", micro_run, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and rows
    for r in rows:
        assert {"role", "kind", "decision"} <= set(r)
        assert r["role"] in ("selector", "researcher", "engineer", "analyst") and r["kind"] == "offline"
        assert isinstance(r["decision"], dict)
    assert {r["node_id"] for r in rows} == {1, 2, 3, 4}
    one = json.loads(cli("traces", micro_run, 2, "--json").stdout)
    assert one and {r["node_id"] for r in one} == {2}
    assert [r["id"] for r in one] == [r["id"] for r in rows if r["node_id"] == 2]


def test_traces_of_an_unknown_node(cli, micro_run):
    helpers.assert_user_error(cli("traces", micro_run, 999))


def test_tree_prints_every_node_and_its_fitness(cli, micro_run):
    proc = cli("tree", micro_run)
    assert proc.returncode == 0, proc.stderr
    for r in helpers.node_rows(micro_run):
        assert f"node {r['id']} " in proc.stdout
        if r["status"] == "done":
            assert f"{r['fitness']:+.4f}" in proc.stdout
        else:
            assert f"failed: {r['reason']}" in proc.stdout


# -- run: mistakes are refused before anything is written ----------------------------------------------
def test_run_with_a_different_root_is_refused(cli, run_copy):
    before = helpers.db_snapshot(run_copy)
    config = (run_copy / "archlab.toml").read_bytes()
    proc = cli("run", run_copy, "--root", "transformer", "--tier", "micro")
    assert helpers.db_snapshot(run_copy) == before
    assert (run_copy / "archlab.toml").read_bytes() == config
    line = helpers.assert_user_error(proc)
    assert "--root" in line


def test_run_with_a_missing_root_file(cli, run_dir):
    line = helpers.assert_user_error(cli("run", run_dir, "--root", "nonexistent.py", "--tier", "micro"))
    assert "nonexistent.py" in line
    assert not run_dir.exists(), "nothing may be created for a run that cannot start"


def test_run_in_a_directory_that_is_not_a_run(cli, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    helpers.assert_user_error(cli("run", tmp_path, "--tier", "micro"))
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_run_with_an_invalid_option_value(cli, run_dir):
    helpers.assert_user_error(cli("run", run_dir, "--strategy", "greedy", "--tier", "micro"))
    assert not run_dir.exists()


# -- help ------------------------------------------------------------------------------------------------
def test_every_command_has_help():
    from archlab.cli import app

    commands = sorted(typer.main.get_command(app).commands)
    assert {"run", "status", "tree", "show", "traces", "check", "eval"} <= set(commands)
    procs = {
        name: subprocess.Popen(
            [*helpers.CLI, *([name] if name else []), "--help"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=helpers.cli_env(),
        )
        for name in ["", *commands]
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (name, err)
        assert "Usage" in out and "Traceback" not in out + err, (name, out, err)
