"""The Ray backend: no-grad forward passes sharded over Ray actors that each hold the model.

Why actors, not tasks: a task would carry the weights with every batch; an actor
receives them once per estimate (one ``ray.put`` of the in-memory module, shared
by every worker) and then only inputs and outputs travel.

Why the result depends only on (seed, shards, threads per worker): the
estimators draw every random number in this process; a batch of n rows is cut
into ``shards`` contiguous pieces whose sizes differ by at most one
(``torch.tensor_split``), piece i always goes to worker i, and the outputs are
concatenated in that order. Each worker computes its piece with a fixed number
of torch threads, so the same piece gives the same bits every time. Against the
in-process backend the outputs agree up to float round-off (a matrix product
over a smaller batch may sum in another order).

Which cluster: the one this process already joined (``ray.init(address=...)``),
else the one ``RAY_ADDRESS`` names, else a local one started here and shut down
at exit. A cluster this process did not start is never shut down.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..dists.base import Distribution
from ..dists.lm import LMDistribution
from ..errors import InvalidArgumentError, TailguardError, UnsupportedError, require_extra
from ..specs import Spec
from .active import ShardTask, TasksFor, sharding

if TYPE_CHECKING:
    from ..oracle import ScoreOracle

#: seconds to wait for the workers to start and load the model before giving up
START_TIMEOUT_S = 120.0


def _ray() -> Any:
    return require_extra("ray", "ray")


def connect() -> Any:
    """The ``ray`` module, joined to the user's cluster if there is one, else to a local one started here."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # joins the cluster RAY_ADDRESS names; it is the user's, so never shut down here
        return ray
    ray.init(address="local", include_dashboard=False, logging_level="WARNING")
    atexit.register(ray.shutdown)
    return ray


class ShardWorker:
    """One Ray actor: a copy of the model in eval mode, run without gradients on its piece of a batch."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.model: nn.Module | None = None

    def load(self, model: nn.Module) -> None:
        self.model = model.eval().requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        if self.model is None:
            raise RuntimeError("no model loaded in this worker")
        with torch.no_grad():
            return self.model(x)  # type: ignore[no-any-return]

    def run(self, task: ShardTask[Any], context: tuple[Distribution, Spec], batch_size: int,
            seed: int) -> tuple[Any, int]:
        """A task's result and the model calls it made, over this worker's copy of the model."""
        from ..oracle import ScoreOracle  # here: the oracle imports this package

        if self.model is None:
            raise RuntimeError("no model loaded in this worker")
        dist, spec = context
        oracle = ScoreOracle(self.model, dist, spec, batch_size)
        result = task(oracle, torch.Generator().manual_seed(seed))
        return result, oracle.n_calls


def _cpu_copy(model: nn.Module) -> nn.Module:
    """The model itself if it lives on the CPU, else a CPU copy (the workers need no accelerator)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def _cause(exc: Exception) -> str:
    """``Type: message`` of the exception raised inside a worker, without Ray's remote traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return str(exc).strip().splitlines()[-1]


class RayBackend:
    """Shards every no-grad forward pass over ``shards`` Ray workers (default: one per CPU of the cluster).

    Each worker reserves ``threads_per_worker`` CPUs and runs torch with that many
    threads. Workers are started on first use and reused by later estimates
    through the same backend object; ``backend="ray"`` uses one shared object.
    Between estimates each worker keeps the last model it was sent.
    """

    name = "ray"
    _shared: ClassVar[RayBackend | None] = None

    def __init__(self, shards: int | None = None, threads_per_worker: int = 1) -> None:
        from ..attack import check_positive_int  # here: attack imports estimate, which imports this module

        self.shards = None if shards is None else check_positive_int(shards, "shards")
        self.threads_per_worker = check_positive_int(threads_per_worker, "threads_per_worker")
        self._workers: list[Any] = []
        self._cluster: tuple[str, str] | None = None  # (job id, node id) the workers belong to
        self._serving: nn.Module | None = None  # the model whose weights the workers hold now
        self._free_cpus = 0  # CPUs free when the workers were asked for, for the error if they never start

    @classmethod
    def shared(cls) -> RayBackend:
        """The backend ``backend="ray"`` names: one per process, so its workers outlive one estimate."""
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shards": len(self._workers) or self.shards,
            "threads_per_worker": self.threads_per_worker,
        }

    @contextmanager
    def serving(self, model: nn.Module) -> Iterator[None]:
        """Workers hold this model's current weights; calling the model without autograd shards the call.

        The model's ``forward`` is replaced on the instance for the duration and
        restored after, so the estimators still see (and may walk) the user's module.
        Serving the model already served (an estimate inside an estimate) changes
        nothing; serving a second model at once would hand the workers' weights to
        the wrong calls and is refused.
        """
        if self._serving is model:
            yield
            return
        if self._serving is not None:
            raise UnsupportedError(
                "this RayBackend already serves another model; give each model its own RayBackend"
            )
        ray = connect()
        self._start_workers(ray)
        self._load(ray, model)
        local_forward = model.forward
        own_forward = "forward" in vars(model)
        model.forward = lambda x: self._forward(ray, local_forward, x)  # type: ignore[method-assign]
        self._serving = model
        try:
            with sharding(model, self):
                yield
        finally:
            self._serving = None
            if own_forward:
                model.forward = local_forward  # type: ignore[method-assign]
            else:
                del model.forward

    def _load(self, ray: Any, model: nn.Module) -> None:
        """Send the weights once (one object shared by every worker) and wait until each worker holds them."""
        try:
            weights = ray.put(_cpu_copy(model))
        except (TypeError, AttributeError, pickle.PicklingError) as exc:
            raise UnsupportedError(
                f"the model cannot be sent to Ray workers: it does not pickle ({exc})"
            ) from None
        try:
            ray.get([w.load.remote(weights) for w in self._workers], timeout=START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise UnsupportedError(
                f"{len(self._workers)} Ray workers of {self.threads_per_worker} CPU each did not start "
                f"within {START_TIMEOUT_S:.0f} s; {self._free_cpus} of the cluster's CPUs were free "
                "when they were asked for (another RayBackend holds its workers until it is closed)"
            ) from None
        except ray.exceptions.RayError as exc:
            raise UnsupportedError(
                f"a Ray worker could not load the model ({_cause(exc)}); the module that defines "
                "its class must be importable on every worker"
            ) from None

    def _start_workers(self, ray: Any) -> None:
        context = ray.get_runtime_context()
        cluster = (context.get_job_id(), context.get_node_id())
        if self._workers and self._cluster == cluster:
            return
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = self.shards or max(1, cpus // self.threads_per_worker)
        if count * self.threads_per_worker > cpus:
            raise InvalidArgumentError(
                f"RayBackend(shards={count}, threads_per_worker={self.threads_per_worker}) needs "
                f"{count * self.threads_per_worker} CPUs; the Ray cluster has {cpus}"
            )
        self._free_cpus = int(ray.available_resources().get("CPU", 0))
        actor = ray.remote(ShardWorker).options(num_cpus=self.threads_per_worker)
        self._workers = [actor.remote(self.threads_per_worker) for _ in range(count)]
        self._cluster = cluster

    def close(self) -> None:
        """Stop the workers now and free their CPUs (dropping the backend or ending Ray does it too)."""
        if self._workers and _ray().is_initialized():
            for w in self._workers:
                _ray().kill(w)
        self._workers, self._cluster = [], None

    def _forward(self, ray: Any, local_forward: Callable[[Tensor], Any], x: Tensor) -> Any:
        """Outputs for x (n, ...): in this process when autograd is on, else piece i of n on worker i."""
        if torch.is_grad_enabled():
            return local_forward(x)
        pieces = [p for p in torch.tensor_split(x.detach().cpu(), len(self._workers)) if p.shape[0]]
        if not pieces:
            return local_forward(x)
        refs = [w.forward.remote(p) for w, p in zip(self._workers, pieces, strict=False)]
        outputs = [self._result(ray, ref, i) for i, ref in enumerate(refs)]
        odd = [y for y in outputs if not isinstance(y, Tensor) or y.dim() == 0]
        if odd:
            return odd[0]  # the oracle names what the model returned, as it does in-process
        return torch.cat(outputs).to(x.device)

    def run_tasks(self, oracle: ScoreOracle, tasks_for: TasksFor[Any],
                  generator: torch.Generator) -> tuple[list[Any], int] | None:
        """Task i on worker i with seed i drawn from ``generator``: results in order, and their model calls.

        D and the spec travel once per call (one object shared by every worker). A D that
        writes its inputs with a model of its own (an LM-written D) stays here, where its
        calls are counted, and so does one that does not pickle: then None, and the caller
        runs the work here, its forward passes still sharded.
        """
        if isinstance(oracle.dist, LMDistribution):
            return None
        ray = _ray()
        try:
            context = ray.put((oracle.dist, oracle.spec))
        except (TypeError, AttributeError, pickle.PicklingError):
            return None
        tasks = tasks_for(len(self._workers))
        seeds = torch.randint(0, 2**62, (len(tasks),), generator=generator).tolist()
        refs = [w.run.remote(task, context, oracle.batch_size, seed)
                for w, task, seed in zip(self._workers, tasks, seeds, strict=False)]
        done = [self._result(ray, ref, i) for i, ref in enumerate(refs)]
        return [result for result, _ in done], sum(calls for _, calls in done)

    def _result(self, ray: Any, ref: Any, index: int) -> Any:
        """Worker ``index``'s answer. A tailguard error raised there (the workers' oracle checks
        outputs and scores as this one does) is raised here as itself; any other failure becomes
        a RuntimeError, which the oracle reports with the input shape, as it does for a model
        failing in this process."""
        where = f"Ray worker {index + 1} of {len(self._workers)}"
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TailguardError):
                raise type(cause)(f"in {where}: {cause}") from None
            raise RuntimeError(f"in {where}: {_cause(exc)}") from None
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"{where} was lost ({type(exc).__name__}: {_cause(exc)})") from None
