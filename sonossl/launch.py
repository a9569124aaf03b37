"""Jobs on a cluster through submitit: the one place its executors are configured.

``slurm`` submits to SLURM (``sbatch``); ``submitit-local`` runs the same payload as a job on
this machine through submitit's local executor (one node), which is how the cluster path is
tested without a cluster. Every job is requeued by submitit on preemption or time-out (its
payload's ``checkpoint`` returns the same payload, which resumes from its own checkpoint).

Used by ``sonossl study`` (job arrays of units, ingestion shards) and by ``sonossl pretrain
--launcher slurm`` (one job of ``num_nodes`` nodes x ``devices`` tasks).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sonossl.errors import SonosslError

LAUNCHERS = ("local", "slurm", "submitit-local")


@dataclass(frozen=True)
class JobShape:
    """What one job asks for. ``nodes`` x ``tasks_per_node`` processes; ``gpus_per_node``;
    ``cpus_per_task``; ``mem`` per node in SLURM syntax (e.g. ``64G``); ``timeout_min`` in
    minutes; ``partition`` (None: the cluster's default); ``array_parallelism``: jobs of one
    array running at once."""

    timeout_min: int = 24 * 60
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: str = "64G"
    partition: str | None = None
    array_parallelism: int | None = None
    name: str = "sonossl"


class Requeueable:
    """A job's payload: ``fn(*args)``, which must resume from its own checkpoint. On preemption or
    time-out submitit calls :meth:`checkpoint`, and the same payload is requeued, so a job loses
    at most what its checkpoint interval covers. ``fn`` and ``args`` must pickle (``fn`` at the
    top of a module)."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.fn, self.args = fn, args

    def __call__(self) -> Any:
        return self.fn(*self.args)

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        return submitit.helpers.DelayedSubmission(Requeueable(self.fn, *self.args))


def check_launcher(launcher: str, shape: JobShape | None = None) -> None:
    """Refuse an unknown launcher, ``slurm`` where there is no ``sbatch``, and a job of more
    than one node on ``submitit-local``."""
    if launcher not in LAUNCHERS:
        raise SonosslError(f"launcher: {launcher!r}; expected one of: {', '.join(LAUNCHERS)}")
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise SonosslError("launcher slurm: sbatch not found on this machine (use --launcher local)")
    if launcher == "submitit-local" and shape is not None and shape.nodes > 1:
        raise SonosslError(f"num_nodes: {shape.nodes}; the submitit-local launcher runs one node (use --launcher slurm)")


def executor(folder: Path, launcher: str, shape: JobShape):
    """A submitit ``AutoExecutor`` writing its job files under ``folder``, with ``shape``'s
    parameters (on ``submitit-local``: one node, and only what the local executor takes)."""
    import submitit

    if launcher == "submitit-local" and shape.nodes > 1:
        check_launcher(launcher, shape)
    cluster = "slurm" if launcher == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    params: dict[str, Any] = {"timeout_min": int(shape.timeout_min), "name": shape.name}
    if shape.array_parallelism is not None:
        params["slurm_array_parallelism"] = int(shape.array_parallelism)
    if cluster == "slurm":
        params.update(nodes=shape.nodes, tasks_per_node=shape.tasks_per_node, cpus_per_task=shape.cpus_per_task,
                      slurm_mem=shape.mem)
        if shape.gpus_per_node > 0:  # none asked for: no --gpus-per-node line (a CPU partition may refuse one)
            params["gpus_per_node"] = shape.gpus_per_node
        if shape.partition:
            params["slurm_partition"] = shape.partition
    ex.update_parameters(**params)
    return ex
