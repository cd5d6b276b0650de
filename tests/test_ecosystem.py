"""Following the ecosystem (issue 21): a run mirrored to TensorBoard, MLflow and W&B, live and
afterwards, each read back with that tool's own reader; and the proposal dataset, every line
checked against the schema that README.md documents and against the run's database and git.

One real micro-tier run (`--mirror tensorboard,mlflow,wandb`) serves every test; tests that
change it work on a copy.
"""

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
import wandb_log

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # runs (600 s bound each)

README = Path(__file__).resolve().parent.parent / "README.md"
FINISHED = ("done", "failed")
# a loss curve as the sandbox stores it with an evaluation (archlab/sandbox/curves.py): one dict per seed
CURVE = {
    "seed": 0,
    "steps": 20,
    "train": [[5, 4.25], [10, 3.875], [20, 3.5]],
    "val": [[10, 3.9375, False], [20, 3.625, True]],
}


def mirror_env(tmp: Path) -> dict:
    """W&B offline with its config and cache in tmp; MLflow at its default (the run's SQLite file)."""
    env = {k: v for k, v in helpers.cli_env().items() if not k.startswith(("MLFLOW_", "WANDB_"))}
    env.update(
        WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp / "wandb-config"), WANDB_CACHE_DIR=str(tmp / "wandb-cache")
    )
    return env


def run_cli(*args, tmp: Path, block: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`archlab ARGS` in a child process; `block`: a module made unimportable there (sys.modules[name] = None
    is Python's own way to say a module is absent), as on a machine without that extra."""
    code = (f"import sys; sys.modules[{block!r}] = None; " if block else "") + helpers.CLI_CODE
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=mirror_env(tmp),
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ecosystem")
    run = tmp / "mirrored"
    proc = run_cli(
        "run",
        run,
        "--tier",
        "micro",
        "--max-nodes",
        4,
        "--threads",
        helpers.THREADS,
        "--mirror",
        "tensorboard,mlflow,wandb",
        tmp=tmp,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "INFO" not in proc.stderr and "warning: mirroring" not in proc.stderr, proc.stderr
    return run


def events_of(run: Path, node_id: int) -> list[str]:
    """The node's events as the database has them ('kind: message')."""
    rows = [e for e in helpers.table_rows(run, "events") if e["node_id"] == node_id]
    assert rows, f"node {node_id} has no events"
    return [f"{e['kind']}: {e['message']}" for e in rows]


def finished(run: Path) -> dict[int, dict]:
    nodes = {n["id"]: n for n in helpers.node_rows(run) if n["status"] in FINISHED}
    assert len(nodes) == 4
    return nodes


# -- readers, one per tool ---------------------------------------------------------------------------
def tensorboard(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def tb_scalars(events, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def tb_texts(events, tag: str) -> dict[int, str]:
    return {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors(f"{tag}/text_summary")}


def mlflow_runs(store: Path, run: Path) -> tuple:
    """(client, {node id: MLflow run}) of the run's experiment in a local SQLite store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(f"archlab/{run.name}")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    by_node = {int(r.data.tags["archlab.node"]): r for r in runs}
    assert len(by_node) == len(runs), "a node mirrored twice"
    return client, by_node


def wandb_runs(folder: Path) -> dict[int, dict]:
    files = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    runs = [wandb_log.read_run(f) for f in files]
    by_node = {int(r["run"].display_name.removeprefix("node-")): r for r in runs}
    assert len(by_node) == len(files), "a node mirrored twice"
    return by_node


# -- live: archlab run --mirror ------------------------------------------------------------------
def test_live_mirror_to_tensorboard_holds_every_finished_node(mirrored):
    nodes = finished(mirrored)
    search = tensorboard(mirrored / "mirror" / "tensorboard" / "search")
    done = {i: n for i, n in nodes.items() if n["status"] == "done"}
    assert tb_scalars(search, "search/fitness") == pytest.approx({i: n["fitness"] for i, n in done.items()}, abs=1e-6)
    assert tb_scalars(search, "search/val_loss") == pytest.approx({i: n["val_loss"] for i, n in done.items()}, abs=1e-6)
    assert tb_scalars(search, "search/failed") == {i: float(n["status"] == "failed") for i, n in nodes.items()}
    assert tb_scalars(search, "metrics/params") == {i: float(n["metrics"]["params"]) for i, n in done.items()}
    lines = tb_texts(search, "nodes")
    assert set(lines) == set(nodes)
    for i, n in nodes.items():
        assert lines[i].startswith(f"node {i} (") and n["status"] in lines[i]
    node_dirs = {int(p.name[5:]) for p in (mirrored / "mirror" / "tensorboard").glob("node-*")}
    assert node_dirs == set(nodes)
    for i in nodes:
        text = tb_texts(tensorboard(mirrored / "mirror" / "tensorboard" / f"node-{i:05d}"), "events")[0]
        assert all(event in text for event in events_of(mirrored, i))


def test_live_mirror_to_mlflow_nests_nodes_under_their_parents(mirrored):
    nodes = finished(mirrored)
    client, runs = mlflow_runs(mirrored / "mirror" / "mlflow" / "mlflow.db", mirrored)
    assert set(runs) == set(nodes)
    for i, n in nodes.items():
        r = runs[i]
        assert r.info.run_name == f"node-{i}"
        assert r.info.status == ("FINISHED" if n["status"] == "done" else "FAILED")
        assert r.data.params["operator"] == n["operator"]
        assert r.data.tags["mlflow.note.content"] == (n["motivation"] or "")[:5000]
        if n["status"] == "done":
            assert r.data.metrics["fitness"] == pytest.approx(n["fitness"])
            assert r.data.metrics["metrics/val_loss"] == pytest.approx(n["metrics"]["val_loss"])
        if n["parent_id"] is None:
            assert "mlflow.parentRunId" not in r.data.tags
        else:
            assert r.data.tags["mlflow.parentRunId"] == runs[n["parent_id"]].info.run_id
        events = Path(
            client.download_artifacts(r.info.run_id, "events.tsv", str(mirrored.parent / f"ev{i}"))
        ).read_text()
        assert [line.split("\t", 1)[1].replace("\t", ": ") for line in events.splitlines()] == events_of(mirrored, i)


def test_live_mirror_to_wandb_writes_one_offline_run_per_node(mirrored):
    nodes = finished(mirrored)
    runs = wandb_runs(mirrored / "mirror")
    assert set(runs) == set(nodes)
    for i, n in nodes.items():
        r = runs[i]
        assert r["run"].run_group == mirrored.name
        assert r["config"]["operator"] == n["operator"] and r["config"]["parent_id"] == n["parent_id"]
        assert r["summary"]["status"] == n["status"]
        if n["status"] == "done":
            assert r["summary"]["fitness"] == pytest.approx(n["fitness"])
    for i in nodes:
        table = next(
            iter((mirrored / "mirror" / "wandb").glob(f"offline-run-*-n{i}/files/media/table/events_*.table.json"))
        )
        assert [f"{row[1]}: {row[2]}" for row in json.loads(table.read_text())["data"]] == events_of(mirrored, i)


# -- afterwards: archlab mirror ------------------------------------------------------------------
def with_curve(run: Path, node_id: int) -> None:
    """Give the node's search evaluation a stored loss curve, as the sandbox records one."""
    conn = sqlite3.connect(run / "archlab.db")
    try:
        if "curves" not in {
            row[1] for row in conn.execute("pragma table_info(evaluations)")
        }:  # a store from before curves
            conn.execute("alter table evaluations add column curves text")
        conn.execute(
            "update evaluations set curves = ? where node_id = ? and kind = 'search'", [json.dumps([CURVE]), node_id]
        )
        conn.commit()
    finally:
        conn.close()


def test_mirror_command_writes_curves_to_every_target_and_adds_only_what_is_missing(mirrored, tmp_path):
    run = tmp_path / "copy"
    helpers.copy_run(mirrored, run, "mirror")
    with_curve(run, 1)
    out = tmp_path / "out"
    proc = run_cli("mirror", run, "--to", "tensorboard,mlflow,wandb", "--out", out, tmp=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in ("tensorboard", "mlflow", "wandb"):
        assert f"{target}: 4 node(s) mirrored, 0 already there" in proc.stdout
    train = {s: v for s, v in CURVE["train"]}
    val = {p[0]: p[1] for p in CURVE["val"]}

    node = tensorboard(out / "tensorboard" / "node-00001")
    assert tb_scalars(node, "loss/train") == train and tb_scalars(node, "loss/val") == val
    node2 = next(e for e in helpers.table_rows(run, "evaluations") if e["node_id"] == 2 and e["kind"] == "search")
    stored = json.loads(node2["curves"] or "[]")  # as its sandbox recorded it
    assert stored and stored[0]["train"], "every evaluation records its curves (sandbox/curves.py)"
    assert set(tb_scalars(tensorboard(out / "tensorboard" / "node-00002"), "loss/train")) == {
        p[0] for p in stored[0]["train"]
    }

    client, runs = mlflow_runs(out / "mlflow" / "mlflow.db", run)
    history = client.get_metric_history(runs[1].info.run_id, "loss/train")
    assert {m.step: m.value for m in history} == train
    assert {m.step: m.value for m in client.get_metric_history(runs[1].info.run_id, "loss/val")} == val

    w = wandb_runs(out)[1]
    logged = {row["_step"]: row for row in w["history"] if "loss/train" in row or "loss/val" in row}
    assert {s: row["loss/train"] for s, row in logged.items() if "loss/train" in row} == train
    assert {s: row["loss/val"] for s, row in logged.items() if "loss/val" in row} == val

    again = run_cli("mirror", run, "--to", "tensorboard,mlflow,wandb", "--out", out, tmp=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    for target in ("tensorboard", "mlflow", "wandb"):
        assert f"{target}: 0 node(s) mirrored, 4 already there" in again.stdout
    assert len(list((out / "tensorboard").glob("node-*/events.out.tfevents.*"))) == 4
    assert len(mlflow_runs(out / "mlflow" / "mlflow.db", run)[1]) == 4 and len(wandb_runs(out)) == 4


@pytest.mark.parametrize("target, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow"), ("wandb", "wandb")])
def test_a_missing_package_is_one_line_with_the_pip_command_before_anything_is_written(
    target, module, mirrored, tmp_path
):
    new = tmp_path / "new"
    line = helpers.assert_user_error(
        run_cli(
            "run", new, "--tier", "micro", "--mirror", f"tensorboard,{target}", tmp=tmp_path, block=module, timeout=60
        )
    )
    assert f"pip install 'archlab[{target}]'" in line and module in line
    assert not new.exists()
    out = tmp_path / "out"
    line = helpers.assert_user_error(
        run_cli("mirror", mirrored, "--to", target, "--out", out, tmp=tmp_path, block=module, timeout=60)
    )
    assert f"pip install 'archlab[{target}]'" in line
    assert not out.exists()


def test_mirror_names_and_run_folders_are_checked(mirrored, tmp_path):
    new = tmp_path / "new"
    line = helpers.assert_user_error(
        run_cli("run", new, "--tier", "micro", "--mirror", "tensorbord", tmp=tmp_path, timeout=60)
    )
    assert "did you mean tensorboard" in line and not new.exists()
    assert "at least one" in helpers.assert_user_error(
        run_cli("mirror", mirrored, "--to", ",", tmp=tmp_path, timeout=60)
    )
    tmp_path.joinpath("plain").mkdir()
    line = helpers.assert_user_error(
        run_cli("mirror", tmp_path / "plain", "--to", "tensorboard", tmp=tmp_path, timeout=60)
    )
    assert "not an archlab run" in line


def test_a_target_that_fails_is_dropped_and_the_others_go_on(mirrored, tmp_path):
    """What a live run does when a mirror breaks (its folder replaced by a file): that target is
    dropped with a report, the node still reaches the other target, nothing is raised."""
    from archlab.export.mirrors import Mirror
    from archlab.tree.store import Store

    store = Store(mirrored)
    mirror = Mirror(mirrored, ["tensorboard", "wandb"], tmp_path / "out")
    try:
        nodes = store.nodes()
        assert mirror.node(store, nodes[0]) == ["tensorboard", "wandb"]
        shutil.rmtree(tmp_path / "out" / "tensorboard")
        (tmp_path / "out" / "tensorboard").write_text("not a folder")
        failures = []
        assert mirror.node(store, nodes[1], on_error=lambda name, e: failures.append((name, e))) == ["wandb"]
        assert [name for name, _ in failures] == ["tensorboard"] and isinstance(failures[0][1], OSError)
        assert list(mirror.targets) == ["wandb"] and mirror.node(store, nodes[2]) == ["wandb"]
    finally:
        mirror.close()
        store.close()
    assert set(wandb_runs(tmp_path / "out")) == {0, 1, 2}


def test_a_target_that_cannot_start_is_one_line(mirrored, tmp_path):
    env_file = tmp_path / "a-file"
    env_file.write_text("")
    proc = subprocess.run(
        [*helpers.CLI, "mirror", str(mirrored), "--to", "mlflow", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**mirror_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{env_file}/mlflow.db"},
    )
    line = helpers.assert_user_error(proc, code=1)
    assert line.startswith("error: mirroring to mlflow cannot start:"), line


# -- the proposal dataset ------------------------------------------------------------------------------
TYPES = {"string": str, "int": int, "number": (int, float), "object": dict, "list": list, "null": type(None)}


def documented_schema() -> dict[str, tuple]:
    """field -> accepted Python types, from the table in README.md's "The proposal dataset"."""
    section = README.read_text().split("### The proposal dataset", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([a-z ]+?) \|", section, flags=re.MULTILINE)
    assert len(rows) > 20, "the schema table is missing from README.md"
    return {name: tuple(TYPES[t] for t in kind.split(" or ")) for name, kind in rows}


def dataset(run: Path, tmp: Path) -> list[dict]:
    out = tmp / "proposals.jsonl"
    proc = helpers.cli("dataset", run, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def apply(diff: str, parent_code: str, tmp: Path) -> str:
    """The parent's code with the diff applied by `git apply`, as a reader of the dataset would."""
    work = tmp / "apply"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    (work / "candidate.py").write_text(parent_code)
    (work / "change.patch").write_text(diff)
    subprocess.run(["git", "apply", "change.patch"], cwd=work, check=True, capture_output=True, text=True)
    return (work / "candidate.py").read_text()


def test_dataset_has_every_proposal_once_in_the_documented_schema_and_matches_the_run(mirrored, tmp_path):
    schema = documented_schema()
    lines = dataset(mirrored, tmp_path)
    nodes = {n["id"]: n for n in helpers.node_rows(mirrored)}
    assert [line["node_id"] for line in lines] == sorted(i for i, n in nodes.items() if n["parent_id"] is not None)
    traces = helpers.table_rows(mirrored, "traces")
    for line in lines:
        assert set(line) == set(schema), set(line) ^ set(schema)
        for field, types in schema.items():
            assert isinstance(line[field], types), (field, line[field])
        n, parent = nodes[line["node_id"]], nodes[line["parent_id"]]
        assert line["schema"] == "archlab.proposal/1" and line["run"] == mirrored.name
        assert (
            line["parent_id"] == n["parent_id"]
            and line["operator"] == n["operator"]
            and line["motivation"] == n["motivation"]
        )
        for field in ("status", "reason", "detail", "fitness", "val_loss", "tier", "seeds", "analysis"):
            assert line[field] == n[field], field
        assert line["metrics"] == n["metrics"] and line["parent_fitness"] == parent["fitness"]
        assert line["parent_commit"] == parent["commit_sha"] and line["commit"] == n["commit_sha"]
        assert line["parent_code"] == helpers.code_at(mirrored, parent["commit_sha"])
        assert apply(line["diff"], line["parent_code"], tmp_path) == helpers.code_at(mirrored, n["commit_sha"])
        mine = [t for t in traces if t["node_id"] == n["id"]]
        assert sorted(t["id"] for ts in line["traces"].values() for t in ts) == sorted(t["id"] for t in mine)
        assert {role for role, ts in line["traces"].items() if ts} == {t["role"] for t in mine}
        assert {"researcher", "engineer", "analyst"} <= set(line["traces"])
        by_id = {t["id"]: t for t in mine}
        for role, ts in line["traces"].items():
            for t in ts:
                assert by_id[t["id"]]["role"] == role and t["prompt"] == by_id[t["id"]]["prompt"]
                assert t["response"] == by_id[t["id"]]["response"]


def test_dataset_to_stdout_and_never_over_a_file_without_force(mirrored, tmp_path):
    lines = dataset(mirrored, tmp_path)
    piped = helpers.cli("dataset", mirrored, "-")
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line) for line in piped.stdout.splitlines()] == lines
    out = tmp_path / "proposals.jsonl"
    out.write_text("mine\n")
    assert "--force" in helpers.assert_user_error(helpers.cli("dataset", mirrored, out))
    assert out.read_text() == "mine\n"
    assert "is a directory" in helpers.assert_user_error(helpers.cli("dataset", mirrored, tmp_path))
    assert helpers.cli("dataset", mirrored, out, "--force").returncode == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert "not an archlab run" in helpers.assert_user_error(helpers.cli("dataset", tmp_path, tmp_path / "x.jsonl"))


def test_dataset_leaves_out_nodes_in_flight(mirrored, tmp_path):
    """A node still being evaluated has no outcome yet: it is left out, and counted."""
    run = tmp_path / "copy"
    helpers.copy_run(mirrored, run, "mirror")
    conn = sqlite3.connect(run / "archlab.db")
    with conn:
        conn.execute("update nodes set status = 'evaluating', fitness = null where id = 3")
    conn.close()
    proc = helpers.cli("dataset", run, tmp_path / "out.jsonl")
    assert proc.returncode == 0, proc.stderr
    assert "Wrote 2 proposal(s)" in proc.stdout and "1 in flight left out" in proc.stdout
    assert [json.loads(line)["node_id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [1, 2]
