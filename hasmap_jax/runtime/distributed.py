"""Multi-host batch jobs: `jax.distributed` start-up, each process's share, cross-process sums.

The attack is embarrassingly parallel over images, so each process attacks its own share on its
local devices (`attack_batch` shards that share over them) and processes only meet to add up
results. On a TPU pod slice, start the same command on every host (e.g.
`gcloud compute tpus tpu-vm ssh NAME --worker=all --command "hasmap ..."`) and call `initialize()`
without arguments: JAX finds the coordinator itself. Elsewhere (multi-GPU clusters, or several
processes on one machine), pass the coordinator address, the process count and this process's id,
or set them for JAX's auto-detection (SLURM, Open MPI).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Joins the job (`jax.distributed.initialize`); call before any other JAX call.

    Args:
      coordinator: "host:port" of process 0; None lets JAX detect it (TPU pods, SLURM, MPI).
      num_processes: the number of processes in the job.
      process_id: this process's index, 0 .. num_processes - 1.
    """
    if coordinator is None and num_processes is None and process_id is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def process_indices(n: int) -> np.ndarray:
    """Indices of this process's share of n items: every process_count-th, from process_index."""
    return np.arange(jax.process_index(), n, jax.process_count())


def global_sum(values: np.ndarray) -> np.ndarray:
    """The element-wise sum of `values` over all processes (each process passes the same shape)."""
    return Team.from_jax().sum(values)


class Team:
    """The processes of one job, as `hasmap protect` uses them: who am I, how many are we, and the
    few collective steps a job needs (gather, sum, wait for all). `Team()` is a job of one process,
    where each step is local; `Team.from_jax()` is the job `initialize` joined."""

    def __init__(self, index: int = 0, count: int = 1):
        if not 0 <= index < count:
            raise ValueError(f"process {index} of {count}: the index must be in 0 .. {count - 1}")
        self.index, self.count = index, count

    @classmethod
    def from_jax(cls) -> Team:
        return cls(jax.process_index(), jax.process_count())

    def allgather(self, values: np.ndarray) -> np.ndarray:
        """(count, *shape): every process's `values`, in process order (each passes the same shape)."""
        values = np.asarray(values)
        if self.count == 1:
            return values[None]
        gathered = multihost_utils.process_allgather(values)
        return np.asarray(gathered).reshape(self.count, *values.shape)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum of `values` over the processes."""
        return self.allgather(values).sum(axis=0)

    def broadcast(self, values: np.ndarray) -> np.ndarray:
        """Process 0's `values`, on every process."""
        return self.allgather(values)[0]

    def barrier(self, name: str) -> None:
        """Returns once every process has reached the barrier of this name."""
        if self.count > 1:
            multihost_utils.sync_global_devices(name)
