"""Executors: where evaluations run. The driver submits jobs and writes every result itself.

An evaluation is a `Job`: a key naming it and the caller's `EvaluationRequest` (request.py; the
candidate's source travels inside it, so no shared file system is needed for the code). An
executor changes only the request's threads and device (its slot's), and on a Ray worker where
the log and the weights are written. `Executor.submit(job)` returns a `concurrent.futures.Future` whose result
is a `runner.Result`; `Executor.evaluate(job)` waits for it. A future raises
`runner.Interrupted` when the run is stopping (the evaluation was abandoned, not failed: the
driver re-runs it on resume) and `ExecutorError` when the executor itself is broken (for
example archlab cannot be imported on a Ray worker). Executors never touch the run's store.

- `LocalExecutor`: slots on this machine.
  * CPU: N slots, `threads` CPU threads each. A job runs `runner.evaluate` in a thread of the
    driver process; the sandbox is that call's child process, exactly as without an executor.
  * GPU: one slot per visible GPU, or --workers slots shared round-robin over the GPUs (several
    small models train side by side on one GPU). A job runs in a short-lived slot process
    (`python -m archlab.sandbox.executors`) whose environment pins CUDA_VISIBLE_DEVICES to the
    slot's GPU; its `runner.evaluate` call passes the pin on to the sandbox.
- `RayExecutor`: one Ray task per job, asking for the resources the job needs (`num_cpus` =
  threads, `num_gpus=1` on GPU and, on a cluster, `memory` = task_memory_gb). The task calls
  `runner.evaluate` on the worker, so the sandbox's isolation (child processes, bubblewrap,
  limits) is kept there, and sends the result and the evaluation log back. A worker or node
  lost during an evaluation makes Ray run the task again elsewhere (`max_retries`, default 2);
  only the result that comes back is recorded, once. When every try was lost the evaluation is
  a failure with reason "lost". Without an address a
  private Ray instance is started on this machine, sized for the run (workers x threads CPUs,
  the visible GPUs); with `--address auto|HOST:PORT` archlab joins a cluster and ships its own
  package to the workers (runtime_env py_modules), which need torch installed. The training
  data must be readable on every worker: the built-in corpus ships with the package; a
  `--data` path must exist at the same place on every node.

Every result's env gets an "executor" entry: kind, host, worker pid, slot or Ray node, threads
and GPUs of the evaluation (the run's CPU/GPU-hour accounting reads it).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from archlab.errors import UserError
from archlab.sandbox import runner
from archlab.sandbox.request import EvaluationRequest, default_threads
from archlab.sandbox.runner import Interrupted, Result

LOG_LIMIT = 2 * 2**20  # a log sent back from a Ray worker keeps its first and last MiB
DEFAULT_RETRIES = 2


class ExecutorError(UserError):
    """The executor cannot run evaluations (not the candidate's fault); the run stops and can be resumed."""


@dataclass(frozen=True)
class Job:
    """One evaluation: its name and the request the sandbox reads."""

    key: str  # names the evaluation in logs, events and Ray's task list, e.g. "node-3 search 0"
    request: EvaluationRequest  # its log_path is where the driver keeps the evaluation's log


class Executor:
    kind = "none"
    slots = 1  # evaluations that can run at once (the driver keeps at least this many candidates busy)
    threads = 1  # CPU threads of one evaluation
    gpus = 0  # GPUs of one evaluation

    def submit(self, job: Job) -> Future:
        raise NotImplementedError

    def evaluate(self, job: Job) -> Result:
        """Run one job and wait for its result (raises Interrupted when the run stops)."""
        return wait(self.submit(job))

    def stop(self) -> None:
        """Abandon every evaluation in flight: their futures raise Interrupted."""

    def shutdown(self) -> None:
        """Release what the executor holds (threads, slot processes, a private Ray instance)."""

    def describe(self) -> dict:
        return {"kind": self.kind, "slots": self.slots, "threads": self.threads, "gpus": self.gpus}


def wait(future: Future) -> Result:
    try:
        return future.result()
    except CancelledError:
        raise Interrupted("the run is stopping") from None


# ---------------------------------------------------------------------------------------------
# local: CPU slots in this process, or one pinned slot process per GPU
# ---------------------------------------------------------------------------------------------
class LocalExecutor(Executor):
    kind = "local"

    def __init__(
        self,
        slots: int = 1,
        threads: int | None = None,
        device: str | None = None,
        gpus: list[str] | None = None,
        isolate: bool | None = None,
    ):
        """slots: evaluations at once. With `gpus`, at least one slot per GPU id, pinned with CUDA_VISIBLE_DEVICES;
        more slots than GPUs share them round-robin (small models leave a GPU mostly idle).
        device: what the sandbox trains on (default: "cuda" with `gpus`, else "cpu").
        isolate: run each job in a slot process (default: with GPUs only)."""
        self.gpus_ids = list(gpus or [])
        self.slots = max(int(slots), len(self.gpus_ids), 1)
        self.threads = threads or default_threads(self.slots)
        self.device = device or ("cuda" if self.gpus_ids else "cpu")
        self.gpus = 1 if self.gpus_ids and self.device == "cuda" else 0
        self.isolate = bool(self.gpus_ids) if isolate is None else isolate
        self._free: queue.Queue = queue.Queue()
        for slot in range(self.slots):
            self._free.put(slot)
        self._pool = ThreadPoolExecutor(
            self.slots * 4, thread_name_prefix="executor"
        )  # submit() waits for a slot in here
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job: Job) -> Future:
        return self._pool.submit(self.evaluate, job)

    def evaluate(self, job: Job) -> Result:
        """Runs in the calling thread once a slot is free (a candidate's own thread, or a pool thread for submit)."""
        slot = self._free.get()
        try:
            if self._stopping.is_set():
                raise Interrupted("the run is stopping")
            started = time.time()
            result = self._in_slot_process(job, slot) if self.isolate else self._in_thread(job)
            result.env = {
                **result.env,
                "executor": {
                    "kind": self.kind,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "slot": slot,
                    "gpu": self._gpu_of(slot),
                    "threads": self.threads,
                    "gpus": self.gpus,
                    "started": started,
                    **result.env.get("executor", {}),
                },
            }
            return result
        finally:
            self._free.put(slot)

    def _placed(self, job: Job) -> EvaluationRequest:
        """The job's request with this executor's threads and device."""
        return job.request.placed(threads=self.threads, device=self.device)

    def _in_thread(self, job: Job) -> Result:
        return runner.evaluate(self._placed(job))

    def _gpu_of(self, slot: int) -> str | None:
        return str(self.gpus_ids[slot % len(self.gpus_ids)]) if self.gpus_ids else None

    def _in_slot_process(self, job: Job, slot: int) -> Result:
        env = dict(os.environ)
        if self.gpus_ids:
            env["CUDA_VISIBLE_DEVICES"] = self._gpu_of(slot)
        payload = self._placed(job).model_dump(mode="json")
        with self._lock:
            if self._stopping.is_set():
                raise Interrupted("the run is stopping")
            proc = subprocess.Popen(
                [sys.executable, "-m", "archlab.sandbox.executors"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                text=True,
            )
            self._procs.add(proc)
        try:
            out, errors = proc.communicate(json.dumps(payload))
        finally:
            with self._lock:
                self._procs.discard(proc)
        if self._stopping.is_set() or proc.returncode == EXIT_INTERRUPTED:
            raise Interrupted("the run is stopping")
        try:
            reply = json.loads(out.strip().splitlines()[-1])
            return Result.model_validate(reply["result"])
        except (ValueError, IndexError, KeyError) as e:
            return Result(
                ok=False,
                reason="lost",
                detail=f"the slot process exited with {proc.returncode} and no result "
                f"({type(e).__name__}); {errors[-1500:]}",
            )

    def stop(self) -> None:
        self._stopping.set()
        if not self.isolate:
            runner.stop_all()  # the sandboxes are this process's children
        with self._lock:
            for proc in list(self._procs):
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict:
        return {**super().describe(), "device": self.device or "auto", "gpu_ids": self.gpus_ids}


EXIT_INTERRUPTED = 3


def _slot_process_main() -> None:
    """`python -m archlab.sandbox.executors`: one request (JSON on stdin) -> one result (JSON on stdout)."""
    request = EvaluationRequest.model_validate(json.loads(sys.stdin.read()))
    parent = os.getppid()

    def stop(*_):  # not in the handler itself: it may interrupt this thread while it holds the runner's lock
        threading.Thread(target=runner.stop_all, daemon=True).start()

    def watchdog() -> None:  # the driver died: kill the sandbox and leave
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                runner.stop_all()
                os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=watchdog, daemon=True).start()
    try:
        result = runner.evaluate(request)
    except Interrupted:
        sys.exit(EXIT_INTERRUPTED)
    result.env = {
        **result.env,
        "executor": {"slot_pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")},
    }
    sys.stdout.write(json.dumps({"result": result.model_dump()}) + "\n")


# ---------------------------------------------------------------------------------------------
# Ray: one task per evaluation
# ---------------------------------------------------------------------------------------------
JOIN_TIMEOUT_S = 10.0


def _answers(address: str) -> None:
    """A HOST:PORT cluster must accept a connection within JOIN_TIMEOUT_S: ray.init retries an address
    nobody answers for minutes, printing warnings (a resume hung over 120 s that way, 2026-12-05)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: ray.init says what is wrong with them
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"--address {address}: nothing answers there ({e.strerror or e})") from None


def _ray_task(payload: dict) -> dict:
    """Runs on a Ray worker: evaluate in the sandbox there; send the result and the log back."""
    import ray

    started = time.time()
    request = EvaluationRequest.model_validate(payload["request"])
    with tempfile.TemporaryDirectory(prefix="archlab-ray-") as tmp:
        # the driver's paths may not exist on this node: the log and the weights travel back
        wanted = Path(tmp) / "weights.safetensors" if request.weights_out else None
        request = request.placed(log_path=Path(tmp) / "eval.log", weights_out=wanted)
        result = runner.evaluate(request)
        logs = {p.name[len("eval.log") :]: _read_capped(p) for p in sorted(Path(tmp).glob("eval.log*"))}
        weights = wanted.read_bytes() if wanted and wanted.is_file() else None
    context = ray.get_runtime_context()
    result.env = {
        **result.env,
        "executor": {
            "kind": "ray",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "node": context.get_node_id(),
            "threads": request.threads,
            "gpus": payload["gpus"],
            "started": started,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
    }
    return {"result": result.model_dump(), "logs": logs, "weights": weights}


def _read_capped(path: Path) -> str:
    data = path.read_bytes()
    if len(data) > LOG_LIMIT:
        half = LOG_LIMIT // 2
        data = (
            data[:half]
            + f"\n[executor] ... {len(data) - LOG_LIMIT:,} bytes of log left out ...\n".encode()
            + data[-half:]
        )
    return data.decode("utf-8", "replace")


class RayExecutor(Executor):
    kind = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int = 1,
        threads: int | None = None,
        device: str = "auto",
        memory_gb: float | None = 2.0,
        max_retries: int = DEFAULT_RETRIES,
        ship_package: bool | None = None,
    ):
        """address: None = start a private local instance; "auto" or HOST:PORT = join that cluster.
        ship_package: send archlab to the workers (default: when joining a cluster)."""
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'archlab[ray]'") from None
        self._ray = ray
        self.address = address
        self.max_retries = max_retries
        self.memory = int(memory_gb * 2**30) if memory_gb else None
        self._owns = False
        local_gpus = visible_gpus() if device != "cpu" and not address else []
        self.threads = threads or (default_threads(workers) if not address else 2)
        if device == "cuda" and not address and not local_gpus:
            raise UserError("--device cuda: no CUDA GPU is visible on this machine")
        if ray.is_initialized():
            pass  # a caller (a test, a notebook) connected already: use that cluster as it is
        elif address:
            ship = True if ship_package is None else ship_package
            runtime_env = {"py_modules": [str(Path(__file__).resolve().parents[1])]} if ship else None
            _answers(address)
            try:
                ray.init(address=address, runtime_env=runtime_env, logging_level="ERROR", log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(
                    f"--address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]})"
                ) from None
        else:
            cpus = max(workers * self.threads, self.threads)
            ray.init(
                address="local",
                num_cpus=cpus,
                num_gpus=len(local_gpus),
                include_dashboard=False,
                object_store_memory=100 * 2**20,
                logging_level="ERROR",
                log_to_driver=False,
            )
            self._owns = True
            self.memory = None  # sized by CPUs already; a memory request could only make tasks unschedulable here
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0))
        if device == "cuda" and cluster_gpus == 0:
            raise UserError("--device cuda: the Ray cluster has no GPU")
        self.gpus = 1 if (device == "cuda" or (device == "auto" and cluster_gpus > 0)) else 0
        self.device = "cuda" if self.gpus else "cpu"
        self.slots = max(1, int(cluster_gpus if self.gpus else resources.get("CPU", 1) // self.threads))
        self._task = ray.remote(_ray_task)
        self._in_flight: dict = {}  # ObjectRef -> Future
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def submit(self, job: Job) -> Future:
        out: Future = Future()
        placed = job.request.placed(threads=self.threads, device=self.device, log_path=None)
        payload = {"request": placed.model_dump(mode="json"), "gpus": self.gpus}
        options = dict(
            name=f"archlab-eval {job.key}",
            num_cpus=self.threads,
            num_gpus=self.gpus,
            max_retries=self.max_retries,
            retry_exceptions=False,
        )
        if self.memory:
            options["memory"] = self.memory
        with self._lock:
            if self._stopping.is_set():
                out.set_exception(Interrupted("the run is stopping"))
                return out
            ref = self._task.options(**options).remote(payload)
            self._in_flight[ref] = out

        def done(fut: Future) -> None:
            with self._lock:
                self._in_flight.pop(ref, None)
            try:
                out.set_result(self._unpack(job, fut.result()))
            except BaseException as e:  # noqa: BLE001  (handed to the waiting driver thread)
                out.set_exception(self._translate(job, e))

        ref.future().add_done_callback(done)
        return out

    def _unpack(self, job: Job, reply: dict) -> Result:
        result = Result.model_validate(reply["result"])
        if job.request.log_path:
            for suffix, text in reply.get("logs", {}).items():
                path = Path(f"{job.request.log_path}{suffix}")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        if reply.get("weights") and job.request.weights_out:
            path = Path(job.request.weights_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(reply["weights"])
        return result

    def _translate(self, job: Job, e: BaseException) -> BaseException:
        ex = self._ray.exceptions
        if self._stopping.is_set() or isinstance(e, ex.TaskCancelledError | CancelledError):
            return Interrupted("the run is stopping")
        lost = tuple(
            getattr(ex, name)
            for name in (
                "WorkerCrashedError",
                "NodeDiedError",
                "OutOfMemoryError",
                "ObjectLostError",
                "OwnerDiedError",
                "LocalRayletDiedError",
            )
            if hasattr(ex, name)
        )
        if isinstance(e, lost):
            return _Lost(
                Result(
                    ok=False,
                    reason="lost",
                    detail=f"the evaluation's Ray worker was lost {self.max_retries + 1} "
                    f"times ({type(e).__name__}): {str(e).splitlines()[0][:300]}",
                )
            )
        if isinstance(e, ex.RayError):
            return ExecutorError(f"the Ray task for {job.key} failed: {str(e).strip().splitlines()[-1][:400]}")
        return e

    def evaluate(self, job: Job) -> Result:
        try:
            return wait(self.submit(job))
        except _Lost as lost:
            return lost.result

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            refs = list(self._in_flight)
        for ref in refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001  (best effort: the cluster may be gone already)
                pass
        self.shutdown()

    def shutdown(self) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False

    def describe(self) -> dict:
        return {
            **super().describe(),
            "device": self.device,
            "address": self.address or "local (private instance)",
            "max_retries": self.max_retries,
        }


class _Lost(Exception):
    """Every try of a Ray task was lost; carries the failure Result for the driver to record."""

    def __init__(self, result: Result):
        super().__init__(result.detail)
        self.result = result


def result_of(future: Future) -> Result:
    """The Result of a submitted job (a lost Ray task becomes a 'lost' failure; Interrupted propagates)."""
    try:
        return wait(future)
    except _Lost as lost:
        return lost.result


# ---------------------------------------------------------------------------------------------
# choosing an executor for a run
# ---------------------------------------------------------------------------------------------
def visible_gpus() -> list[str]:
    """Ids of the CUDA GPUs this process may use (CUDA_VISIBLE_DEVICES entries when it is set)."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [d.strip() for d in pinned.split(",") if d.strip() and d.strip() != "-1"]
    if not (os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0")):
        return []
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001  (no usable CUDA: CPU slots)
        return []


def make(config) -> Executor:
    """The executor a RunConfig asks for (executor, address, device, workers, threads)."""
    device = getattr(config, "device", "auto")
    if getattr(config, "executor", "local") == "ray":
        return RayExecutor(
            config.address,
            workers=config.workers,
            threads=config.threads,
            device=device,
            memory_gb=getattr(config, "task_memory_gb", 2.0),
            max_retries=getattr(config, "max_retries", DEFAULT_RETRIES),
        )
    gpus = visible_gpus() if device != "cpu" else []
    if device == "cuda" and not gpus:
        raise UserError("--device cuda: no CUDA GPU is visible on this machine")
    if gpus:
        slots = max(config.workers, len(gpus))
        return LocalExecutor(slots=slots, threads=config.threads or default_threads(slots), gpus=gpus)
    return LocalExecutor(slots=config.workers, threads=config.threads, device="cpu")


if __name__ == "__main__":
    _slot_process_main()
