"""Mirror a run's nodes to TensorBoard, MLflow and Weights & Biases.

Each finished node (done or failed, the root included) is written once to each target: its
figures (fitness, val_loss, every numeric metric), its loss curves when its evaluations carry
them, and its events (evaluation attempts, recoveries, promotions). Two ways in: live, from
`archlab run RUN --mirror tensorboard,mlflow,wandb` (each node as it finishes), and afterwards,
`archlab mirror RUN --to ...`, which adds the nodes a target does not have yet. Each target
says itself which nodes it holds, so a mirror interrupted half way or started late catches up.

Where it goes (OUT defaults to RUN/mirror):
- TensorBoard: OUT/tensorboard/search (figures per node id, a text line per node) and
  OUT/tensorboard/node-NNNNN (its curves, so curves of several nodes overlay).
- MLflow: the experiment `archlab/RUN` at $MLFLOW_TRACKING_URI, or else a SQLite store
  OUT/mlflow/mlflow.db; one MLflow run per node, nested under its parent node's run.
- W&B: one W&B run per node, grouped by the archlab run, offline under OUT/wandb unless
  $WANDB_MODE says otherwise (`wandb sync OUT/wandb/offline-run-*` uploads them later).

The packages are optional extras (pip install 'archlab[tensorboard]' ...): a missing one is
one line naming the pip command, checked before anything is written.
"""

import contextlib
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import os
import re
import socket
import time
from difflib import get_close_matches
from pathlib import Path

from archlab.errors import UserError
from archlab.text import code_block, markdown
from archlab.tree.store import Store

# target -> (modules it imports, what to call it)
NEEDS = {
    "tensorboard": (("tensorboard",), "TensorBoard"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "MLflow"),  # sqlalchemy + alembic: the local SQLite store
    "wandb": (("wandb",), "Weights & Biases"),
}
TARGETS = tuple(NEEDS)
MIRROR_DIR = "mirror"  # under the run directory, unless --out says otherwise
TEXT_LIMIT = 5000  # MLflow keeps at most 8000 characters per tag


def parse_targets(text: str, flag: str = "--mirror") -> list[str]:
    """'tensorboard,mlflow' -> ['tensorboard', 'mlflow'], each name checked (with a did-you-mean);
    'none' -> [] (a resumed run stops mirroring)."""
    if flag == "--mirror" and text.strip().lower() == "none":
        return []
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag}: name at least one of {', '.join(TARGETS)}")
    for name in names:
        if name not in NEEDS:
            close = get_close_matches(name, TARGETS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{flag} {name}: not a mirror target{hint}; choose from {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def check_installed(targets: list[str]) -> None:
    """One line with the pip command for the first target whose packages are missing."""
    for target in targets:
        modules, label = NEEDS[target]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(
                f"mirroring to {target} needs {label} ({missing[0]} is missing): pip install 'archlab[{target}]'"
            )


# -- what is mirrored of a node ---------------------------------------------------------------------
def node_facts(store: Store, node: dict) -> dict:
    """A finished node as every target sees it: figures, numeric metrics, curves and events."""
    evaluations = store.evaluations(node["id"])
    metrics = node.get("metrics") or next((e["metrics"] for e in reversed(evaluations) if e.get("metrics")), None)
    return {
        **{
            k: node.get(k)
            for k in (
                "id",
                "parent_id",
                "status",
                "reason",
                "operator",
                "motivation",
                "fitness",
                "val_loss",
                "tier",
                "seeds",
                "created",
                "finished",
            )
        },
        "metrics": numbers(metrics),
        "curves": curves(evaluations),
        "events": [{"ts": e["ts"], "kind": e["kind"], "message": e["message"]} for e in store.events(node["id"])],
    }


def numbers(metrics: dict | None) -> dict[str, float]:
    """The finite numeric metrics (a failed node's partial ones too); flags and texts stay out."""
    return {str(k): float(v) for k, v in metrics.items() if _finite(v)} if isinstance(metrics, dict) else {}


def curves(evaluations: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Loss curves of the node's evaluations, when they carry them (a `curves` list, one dict per seed
    with `train` and `val` lists of [step, loss, ...]). The first search curve is `train`/`val`, so
    the same tag overlays across nodes; others are named by tier and seed ('train/verify-seed1')."""
    out: dict[str, list[tuple[int, float]]] = {}
    for e in evaluations:
        for curve in _stored_curves(e):
            for split in ("train", "val"):
                points = [
                    (int(p[0]), float(p[1]))
                    for p in curve.get(split) or ()
                    if isinstance(p, list | tuple) and len(p) >= 2 and _finite(p[0]) and _finite(p[1])
                ]
                if points:
                    plain = e.get("kind") == "search" and split not in out
                    out.setdefault(
                        split if plain else f"{split}/{e.get('tier')}-seed{curve.get('seed', e.get('seed'))}", points
                    )
    return out


def _stored_curves(evaluation: dict) -> list[dict]:
    stored = evaluation.get("curves")
    if isinstance(stored, str):  # a store whose reader does not decode the column
        try:
            stored = json.loads(stored)
        except ValueError:
            return []
    return [c for c in stored if isinstance(c, dict)] if isinstance(stored, list) else []


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def headline(f: dict) -> str:
    """'node 7 (parent 3) done: fitness +0.0123, val_loss 2.3456 [micro] · short_conv' — plain text."""
    parent = "the root" if f["parent_id"] is None else f"parent {f['parent_id']}"
    outcome = (
        f"done: fitness {f['fitness']:+.4f}, val_loss {f['val_loss']:.4f}"
        if f["status"] == "done" and f["fitness"] is not None
        else f"{f['status']}: {f['reason'] or '?'}"
    )
    return (
        f"node {f['id']} ({parent}) {outcome}"
        + (f" [{f['tier']}]" if f.get("tier") else "")
        + f" · {f['operator'] or ''}"
    )


# -- the targets ----------------------------------------------------------------------------------
class EventFile:
    """A TensorBoard event file written in this thread (SummaryWriter writes from a thread of its own,
    whose failure, a full disk say, would print a traceback into the run's output, once per node)."""

    def __init__(self, folder: Path):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        folder.mkdir(parents=True, exist_ok=True)
        # the name TensorBoard looks for; time, host, pid and a counter keep files of one folder apart
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_files)}"
        self._event = Event
        self._records = RecordWriter(open(folder / name, "wb"))
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def scalar(self, tag: str, value: float, step: int) -> None:
        from torch.utils.tensorboard.summary import scalar

        self._write(self._event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def text(self, tag: str, text: str, step: int) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        self._write(self._event(wall_time=time.time(), step=step, summary=text_summary(tag, text)))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


_files = itertools.count()


class TensorBoardTarget:
    """OUT/tensorboard/search: scalars per node id; OUT/tensorboard/node-NNNNN: the node's curves and text."""

    def __init__(self, out: Path, run_dir: Path):
        self.dir = out / "tensorboard"
        self.search: EventFile | None = None

    def mirrored(self) -> set[int]:
        return {
            int(p.name[5:])
            for p in self.dir.glob("node-*")
            if p.name[5:].isdigit() and any(p.glob("events.out.tfevents.*"))
        }

    def node(self, f: dict) -> None:
        if self.search is None:
            self.search = EventFile(self.dir / "search")
        step = f["id"]
        for key in ("fitness", "val_loss"):
            if f[key] is not None:
                self.search.scalar(f"search/{key}", f[key], step)
        self.search.scalar("search/failed", float(f["status"] == "failed"), step)
        for key, value in f["metrics"].items():
            self.search.scalar(f"metrics/{key}", value, step)
        self.search.text("nodes", markdown(headline(f)), step)
        self.search.flush()
        # the node's own folder last: its event file is what says "mirrored" (a crash before it redoes the node)
        writer = EventFile(self.dir / f"node-{f['id']:05d}")
        try:
            for name, points in f["curves"].items():
                for s, value in points:
                    writer.scalar(f"loss/{name}", value, s)
            writer.text("node", markdown(headline(f)) + "\n\n" + code_block(f["motivation"] or ""), 0)
            if f["events"]:
                writer.text("events", "\n\n".join(markdown(f"{e['kind']}: {e['message']}") for e in f["events"]), 0)
        finally:
            writer.close()

    def close(self) -> None:
        if self.search is not None:
            self.search.close()


class MlflowTarget:
    """One MLflow run per node in the experiment `archlab/RUN`, nested under its parent node's run."""

    def __init__(self, out: Path, run_dir: Path):
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # after mlflow's import, which sets its own levels: database set-up
            logging.getLogger(name).setLevel(logging.WARNING)  # chatter would break into the run's progress lines

        local = out / "mlflow"
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local.resolve() / 'mlflow.db'}"
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.name = f"archlab/{Path(run_dir).resolve().name}"
        found = self.client.get_experiment_by_name(self.name)
        self.experiment = (
            found.experiment_id
            if found
            else self.client.create_experiment(
                self.name,
                artifact_location=(local.resolve() / "artifacts").as_uri()
                if "MLFLOW_TRACKING_URI" not in os.environ
                else None,
            )
        )
        self.runs = self._node_runs()

    def _node_runs(self) -> dict[int, str]:
        """node id -> MLflow run id of what this experiment already holds."""
        runs, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment], max_results=1000, page_token=token)
            for r in page:
                node = r.data.tags.get("archlab.node")
                if node and node.isdigit():
                    runs[int(node)] = r.info.run_id
            token = page.token
            if not token:
                return runs

    def mirrored(self) -> set[int]:
        return set(self.runs)

    def node(self, f: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "archlab.node": str(f["id"]),
            "archlab.status": f["status"],
            "mlflow.note.content": (f["motivation"] or "")[:TEXT_LIMIT],
        }
        if f["parent_id"] in self.runs:  # the search tree as MLflow's nested runs
            tags["mlflow.parentRunId"] = self.runs[f["parent_id"]]
        start = int((f["created"] or 0) * 1000) or None
        run = self.client.create_run(self.experiment, run_name=f"node-{f['id']}", tags=tags, start_time=start)
        run_id = run.info.run_id
        at = int((f["finished"] or f["created"] or 0) * 1000)
        figures = {
            **{f"metrics/{k}": v for k, v in f["metrics"].items()},
            **{k: f[k] for k in ("fitness", "val_loss") if f[k] is not None},
        }
        metrics = [Metric(_key(k), v, at, 0) for k, v in figures.items()]
        metrics += [Metric(_key(f"loss/{name}"), v, at, s) for name, points in f["curves"].items() for s, v in points]
        params = [
            Param(k, str(f[k])[:TEXT_LIMIT])
            for k in ("operator", "parent_id", "tier", "seeds", "reason")
            if f[k] is not None
        ]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + 1000],
                params=params if i == 0 else [],
                tags=[RunTag("archlab.headline", headline(f)[:TEXT_LIMIT])] if i == 0 else [],
            )
        if f["events"]:
            self.client.log_text(
                run_id, "".join(f"{e['ts']:.3f}\t{e['kind']}\t{e['message']}\n" for e in f["events"]), "events.tsv"
            )
        self.client.set_terminated(
            run_id,
            status="FINISHED" if f["status"] == "done" else "FAILED",
            end_time=int((f["finished"] or 0) * 1000) or None,
        )
        self.runs[f["id"]] = run_id

    def close(self) -> None:
        pass


def _key(name: str) -> str:
    """MLflow accepts letters, digits, _ - . / and spaces in metric names."""
    return re.sub(r"[^\w\-. /]", "_", name)


class WandbTarget:
    """One W&B run per node, grouped by the archlab run; offline (files under OUT/wandb) unless $WANDB_MODE says otherwise.
    Run ids are fixed per run directory and node, so a later `wandb sync` never uploads a node twice."""

    def __init__(self, out: Path, run_dir: Path):
        import wandb

        self.wandb = wandb
        self.dir = out
        self.dir.mkdir(parents=True, exist_ok=True)
        resolved = Path(run_dir).resolve()
        self.group = resolved.name
        slug = re.sub(r"[^A-Za-z0-9_-]", "-", resolved.name)[:40]
        self.prefix = f"{slug}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:8]}"
        self.mode = os.environ.get("WANDB_MODE") or "offline"

    def mirrored(self) -> set[int]:
        pattern = re.compile(rf"-{re.escape(self.prefix)}-n(\d+)$")
        return {int(m.group(1)) for p in (self.dir / "wandb").glob("*run-*") if (m := pattern.search(p.name))}

    def node(self, f: dict) -> None:
        wandb = self.wandb
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True)
        config = {k: f[k] for k in ("id", "parent_id", "operator", "tier", "seeds", "motivation")}
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "archlab"),
            group=self.group,
            job_type="node",
            name=f"node-{f['id']}",
            id=f"{self.prefix}-n{f['id']}",
            dir=str(self.dir),
            mode=self.mode,
            config=config,
            tags=[f["status"]],
            reinit="create_new",
            settings=settings,
        )
        try:
            by_step: dict[int, dict] = {}  # W&B's history wants steps in order: curves merged by step
            for name, points in f["curves"].items():
                for s, value in points:
                    by_step.setdefault(s, {})[f"loss/{name}"] = value
            for s in sorted(by_step):
                run.log(by_step[s], step=s)
            run.summary.update(
                {
                    **{f"metrics/{k}": v for k, v in f["metrics"].items()},
                    **{k: f[k] for k in ("fitness", "val_loss", "status", "reason")},
                    "headline": headline(f),
                }
            )
            if f["events"]:
                run.log(
                    {
                        "events": wandb.Table(
                            columns=["ts", "kind", "message"],
                            data=[[e["ts"], e["kind"], e["message"]] for e in f["events"]],
                        )
                    }
                )
        finally:
            run.finish(exit_code=0 if f["status"] == "done" else 1)

    def close(self) -> None:
        pass


class MirrorUnavailable(UserError):
    exit_code = 1  # not a usage error: the target itself (a store, a folder) refused


def brief(e: Exception) -> str:
    """'Type: the first line of the message', for a one-line warning or error."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


TARGET_CLASSES = {"tensorboard": TensorBoardTarget, "mlflow": MlflowTarget, "wandb": WandbTarget}


# -- the mirror ---------------------------------------------------------------------------------
class Mirror:
    """The run's chosen targets, opened once; `node` writes a finished node to each target that lacks it."""

    def __init__(self, run_dir: Path, targets: list[str], out: Path | None = None):
        check_installed(targets)
        self.out = Path(out) if out else Path(run_dir) / MIRROR_DIR
        self.targets, self.done = {}, {}
        for name in targets:
            try:
                self.targets[name] = TARGET_CLASSES[name](self.out, Path(run_dir))
                self.done[name] = self.targets[name].mirrored()
            except Exception as e:  # a tracking URI that cannot be used, a folder that cannot be written, ...
                self.close()
                raise MirrorUnavailable(f"mirroring to {name} cannot start: {brief(e)}") from None

    def node(self, store: Store, node: dict, on_error=None) -> list[str]:
        """Mirror one node where it is missing; returns the targets written. In-flight nodes wait.
        With `on_error(target, exception)`, a target that fails is dropped instead of raising."""
        if node["status"] not in ("done", "failed"):
            return []
        todo = [name for name in self.targets if node["id"] not in self.done[name]]
        facts = node_facts(store, node) if todo else None
        for name in todo:
            try:
                self.targets[name].node(facts)
            except Exception as e:
                if on_error is None:
                    raise
                with contextlib.suppress(Exception):  # broken already: what it says on closing adds nothing
                    self.targets.pop(name).close()
                on_error(name, e)
                continue
            self.done[name].add(node["id"])
        return [name for name in todo if name in self.targets]

    def sync(self, store: Store, on_node=lambda node_id: None, on_error=None) -> dict[str, int]:
        """Every finished node a target lacks, in id order (parents first: MLflow nests children under them)."""
        written = dict.fromkeys(self.targets, 0)
        for node in store.evaluated():
            for name in self.node(store, node, on_error):
                written[name] += 1
            on_node(node["id"])
        return written

    def close(self) -> None:
        for target in self.targets.values():
            target.close()
