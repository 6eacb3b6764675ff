"""Data-parallel runs on torch.distributed: one process per GPU (NCCL) or N CPU processes (gloo).

A run starts in one of two ways, and both end in :func:`init_from_environment`:

* :func:`launch` starts the processes on this machine (the reference's
  ``main.py --master_port``) with torch's elastic launcher
  (``torch.distributed.launcher``, what ``torchrun`` runs): one per visible
  GPU, or ``nproc`` CPU processes; a single process runs in place, with no
  process group;
* torchrun starts them (on one or many machines) and sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
  :func:`launch` then runs the worker in this process.

Training wraps the model with :func:`wrap_for_training` (DDP averages the
gradients of the ranks' shares of a batch); evaluation gives each rank a
disjoint share of the users (:class:`ShardSampler`) and adds the ranks' metric
sums and counts (:func:`reduce_metrics`), so N processes report the metrics of
one. Weights are saved from the bare model (no DDP ``module.`` prefix) and load
in 1 or N processes.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import uuid
from typing import Any, Callable, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
from torch.nn.parallel import DistributedDataParallel

from generative_recommenders.errors import UserError
from generative_recommenders.evaluation.metrics import MetricAccumulator

BACKENDS = ("nccl", "gloo")
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(UserError):
    """Processes that cannot be started as asked; raised before any is started."""


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    ``backend`` is None for a single process without a process group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]

    @property
    def is_main(self) -> bool:
        """The one process that writes logs, TensorBoard events and checkpoints."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def single_process_context() -> DistributedContext:
    """One process without a process group, on the GPU when there is one."""
    return DistributedContext(0, 1, 0, torch.device("cuda" if torch.cuda.is_available() else "cpu"), None)


def process_device(backend: str, local_rank: int) -> torch.device:
    """NCCL processes own GPU ``local_rank``; gloo processes run on the CPU."""
    return torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")


def _resolve_backend(backend: Optional[str]) -> str:
    """``backend``, by default NCCL when a GPU is visible, else gloo; checked against this machine."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise DistributedSetupError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedSetupError(
            "backend 'nccl' needs CUDA, but torch sees no GPU on this machine; "
            "run CPU processes with backend 'gloo' (--nproc N)"
        )
    return backend


def _check_gpus(needed: int, request: str) -> None:
    visible = torch.cuda.device_count()
    if needed > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        restriction = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        raise DistributedSetupError(
            f"{request}: {needed} GPUs needed but only {visible} visible{restriction}; "
            f"ask for at most {visible} processes"
        )


def plan_launch(nproc: Optional[int] = None, backend: Optional[str] = None) -> Tuple[int, str]:
    """How many processes to start on this machine, and their backend.

    ``backend`` defaults to NCCL when a GPU is visible, else gloo. ``nproc``
    defaults to one process per visible GPU under NCCL, one process under gloo.
    """
    backend = _resolve_backend(backend)
    if nproc is None:
        nproc = torch.cuda.device_count() if backend == "nccl" else 1
    if nproc < 1:
        raise DistributedSetupError(f"--nproc must be >= 1 (the processes to start on this machine), got {nproc}")
    if backend == "nccl":
        _check_gpus(nproc, f"{nproc} NCCL processes, one GPU each")
    return nproc, backend


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_environment(backend: Optional[str] = None) -> DistributedContext:
    """Joins the process group described by torchrun's variables (``ENVIRONMENT``)."""
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"the environment lacks {', '.join(missing)}: start the processes with torchrun or launch()"
        )
    rank, world_size, local_rank = (int(os.environ[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    backend = _resolve_backend(backend)
    if backend == "nccl":
        _check_gpus(local_rank + 1, f"LOCAL_RANK {local_rank} (more processes per node than GPUs?)")
    device = process_device(backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None
    )
    return DistributedContext(rank, world_size, local_rank, device, backend)


def free_port() -> int:
    """A TCP port nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def check_port_free(port: int) -> None:
    """Fails early, naming the port, when the rendezvous could not listen on it."""
    if not 0 < port < 65536:
        raise DistributedSetupError(f"--master_port {port} is not a TCP port (1..65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the rendezvous store does: a port left in TIME_WAIT is usable, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError as e:
            raise DistributedSetupError(
                f"--master_port {port} is already in use on this machine ({e.strerror}); "
                f"pass a free one, e.g. --master_port={free_port()}"
            ) from None


def _run_in_group(worker: Callable[..., None], args: Tuple[Any, ...], backend: Optional[str]) -> None:
    context = init_from_environment(backend)
    try:
        worker(context, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def available_cores() -> int:
    """The cores this process may run on (``taskset``, cgroup cpusets), not the machine's."""
    if hasattr(os, "sched_getaffinity"):  # Linux; macOS and Windows have no affinity call
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _launched_process(worker: Callable[..., None], args: Tuple[Any, ...], backend: str) -> Optional[str]:
    """One process of :func:`launch`: a user error comes back as its message (every rank
    meets the same one: they read the same config and data), anything else fails the run."""
    if backend == "gloo":
        # N CPU processes that each used every core would fight over them
        # (torchrun sets OMP_NUM_THREADS=1 for the same reason).
        torch.set_num_threads(max(1, available_cores() // int(os.environ["WORLD_SIZE"])))
    try:
        _run_in_group(worker, args, backend)
    except UserError as error:
        return str(error)
    return None


def launch(
    worker: Callable[..., None],
    *args: Any,
    nproc: Optional[int] = None,
    backend: Optional[str] = None,
    master_port: int = 12355,
) -> None:
    """Runs ``worker(context, *args)`` in every process of the run.

    Under torchrun this process is one of the run's: it joins the group
    (torchrun's ``--nproc_per_node`` sets the count, so ``nproc`` must be None).
    Otherwise :func:`plan_launch` decides: one process runs here, without a
    process group; more are started on this machine by torch's elastic
    launcher, the rendezvous listening on ``master_port``. ``worker`` and
    ``args`` must pickle when processes are started. A :class:`UserError` in
    the processes is raised here, once.
    """
    if launched_by_torchrun():
        if nproc is not None:
            raise DistributedSetupError(
                "under torchrun the number of processes is torchrun's --nproc_per_node; drop --nproc"
            )
        _run_in_group(worker, args, backend)
        return
    num_processes, backend = plan_launch(nproc, backend)
    if num_processes == 1:
        worker(DistributedContext(0, 1, 0, process_device(backend, 0), None), *args)
        return
    check_port_free(master_port)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint=f"localhost:{master_port}",
        max_restarts=0,
        start_method="spawn",
    )
    try:
        outcomes = elastic_launch(config, _launched_process)(worker, args, backend)
    except ChildFailedError as error:
        raise RuntimeError(f"a training process failed: {error.format_msg()}") from None
    messages = [message for message in outcomes.values() if message is not None]
    if messages:
        raise UserError(messages[0])


def process_seed(seed: int, context: DistributedContext) -> int:
    """The seed of this rank's random draws (negatives, dropout): distinct per rank,
    and ``seed`` itself on rank 0, so a single-process run draws as before."""
    return seed + 1_000_003 * context.rank


class ShardSampler(torch.utils.data.Sampler[int]):
    """Rank ``r``'s share of ``range(num_examples)``: positions ``r, r + N, ...``
    of the same (optionally shuffled) order on every rank.

    The order is ``DistributedSampler``'s (``seed + epoch``), so one process
    sees exactly its order; but no example is repeated to even out the shards:
    across ranks every example comes exactly once, and shards differ in length
    by at most one. Meant for evaluation, where a repeated user would be counted
    twice; training needs ``DistributedSampler``'s equal shards, so that every
    rank takes the same number of steps.
    """

    def __init__(
        self, num_examples: int, rank: int, world_size: int, shuffle: bool = False, seed: int = 0
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.num_examples = num_examples
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles (the same way on every rank) for ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = range(self.num_examples)
        return iter(order[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(range(self.rank, self.num_examples, self.world_size))


def reduce_metrics(accumulator: MetricAccumulator, context: DistributedContext) -> MetricAccumulator:
    """Every rank's metric sums and user counts added up, on every rank."""
    if not context.is_distributed:
        return accumulator
    names = list(accumulator.sums)
    # float64 holds user counts exactly up to 2**53.
    totals = torch.tensor(
        [accumulator.sums[name] for name in names] + [accumulator.count],
        dtype=torch.float64,
        device=context.device,
    )
    dist.all_reduce(totals)
    reduced = MetricAccumulator()
    *sums, count = totals.tolist()
    reduced.sums = dict(zip(names, sums))
    reduced.count = int(count)
    return reduced


def gather_objects(obj: Any, context: DistributedContext) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (e.g. each rank's
    generator states, for a checkpoint that resumes every rank exactly)."""
    if not context.is_distributed:
        return [obj]
    gathered: List[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, context: DistributedContext) -> Any:
    """Rank 0's ``obj`` (picklable), on every rank."""
    if not context.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_across_ranks(value: torch.Tensor, context: DistributedContext) -> float:
    """The mean of a scalar over the ranks (e.g. the loss to log)."""
    total = value.detach().to(device=context.device, dtype=torch.float64).reshape(1)
    if context.is_distributed:
        dist.all_reduce(total)  # gloo has no AVG
    return float(total) / context.world_size


class LossModule(torch.nn.Module):
    """Calls ``loss_fn(model, *args)`` from ``forward``: DDP synchronises the
    gradients of what runs inside its forward, and the recommender's training
    loss uses its methods, not its ``forward``."""

    def __init__(self, model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.loss_fn(self.model, *args, **kwargs)


def wrap_for_training(
    model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], context: DistributedContext
) -> torch.nn.Module:
    """A module whose call ``(*args)`` returns ``loss_fn(model, *args)``; under
    several processes a DDP replica, whose backward averages the ranks' gradients.

    The model must be on ``context.device``. The optimizer takes
    ``model.parameters()`` as in a single process.
    """
    module = LossModule(model, loss_fn)
    if not context.is_distributed:
        return module
    return DistributedDataParallel(
        module,
        device_ids=[context.device.index] if context.device.type == "cuda" else None,
        # The buffers (masks, the frozen text table) never change: copied from rank 0
        # once at construction, resending them every step would only cost time.
        forward_sync_buffers=False,
    )


def barrier(context: DistributedContext) -> None:
    if context.is_distributed:
        dist.barrier()
