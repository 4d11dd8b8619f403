"""Multi-host runs: one jaxmap process per host, joined with ``jax.distributed``.

Every process runs the same job over the same model list and texts; together they hold one
device mesh spanning all hosts, so each model is loaded once, sharded over every device, and
each batch is split over the hosts. Process 0 alone opens the store for writing: it decides
which models are still missing and shares that with the others, and it commits the rows.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .errors import JaxmapError

# Variables that cluster launchers set and JAX's cluster detection reads (SLURM, Open MPI,
# MPICH, Kubernetes indexed jobs through JAX's own variables).
_LAUNCHER_VARIABLES = (
    "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "JAX_COORDINATOR_ADDRESS",
)


class DistributedError(JaxmapError, RuntimeError):
    """A multi-host set-up that cannot start; the message says which setting is wrong."""


def launched_by_cluster() -> bool:
    """Whether a cluster launcher's environment variables are present."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: int = 300,
) -> None:
    """Join the other processes of a multi-host run (call before any other JAX work).

    With ``coordinator`` (``HOST:PORT`` of process 0), ``num_processes`` and ``process_id``
    are required. Without it, JAX detects the cluster from the launcher's environment
    (SLURM, Open MPI, ...).
    """
    import jax

    if coordinator is not None:
        host, _, port = coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"--coordinator {coordinator!r}: expected HOST:PORT, e.g. 10.0.0.1:1234")
        if num_processes is None or process_id is None:
            raise DistributedError("--coordinator needs --num-processes and --process-id too")
        if not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--process-id {process_id} is outside 0..{num_processes - 1} (--num-processes {num_processes})"
            )
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_seconds,
        )
    except (RuntimeError, ValueError) as error:
        where = coordinator or "the cluster's coordinator"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DistributedError(f"cannot join the multi-host run at {where}: {first}") from None


def process_index() -> int:
    import jax

    return jax.process_index()


def process_count() -> int:
    import jax

    return jax.process_count()


def share_from_first(value):
    """``value`` as process 0 has it, on every process (JSON-serialisable values)."""
    if process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    payload = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    length = int(multihost_utils.broadcast_one_to_all(np.array(len(payload), np.int64)))
    buffer = np.zeros(length, np.uint8)
    if process_index() == 0:
        buffer[:] = payload
    shared = multihost_utils.broadcast_one_to_all(buffer)
    return json.loads(np.asarray(shared, np.uint8).tobytes().decode("utf-8"))
