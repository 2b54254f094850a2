"""Which device each worker process trains on, decided in the pool's process before any
worker starts, without TensorFlow.

GPUs are found with `nvidia-smi` (index, UUID, memory), keeping only those an existing
CUDA_VISIBLE_DEVICES lets through; no `nvidia-smi`, no GPUs. `plan` then gives each worker a
Placement: a GPU (pinned by its UUID, since CUDA's own numbering may differ from nvidia-smi's)
with memory growth, or a share of one with a memory limit; without GPUs, the CPU with its share
of the cores. The worker applies its Placement before it imports TensorFlow (`pin`).

Without GPUs, `--workers auto` starts one worker per core (a group of one core): on the
2-core benchmark machine two single-threaded workers finished 2.4x the trials of one
two-threaded worker, and four added nothing over two (benchmarks/README.md, "Workers on one
machine"); and no more workers than the memory holds at WORKER_MEMORY_MB each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dlboost_search.errors import DeviceError

__all__ = [
    "CONTEXT_MB",
    "WORKER_MEMORY_MB",
    "Gpu",
    "Placement",
    "cpu_cores",
    "device_of",
    "machine_memory",
    "parse_workers",
    "pin",
    "plan",
    "visible_gpus",
]

# What one worker process takes on the host (TensorFlow, data, a model): ~1 GB measured in
# benchmarks/memory_soak.py, with room to spare.
WORKER_MEMORY_MB = 1500
# What a CUDA context takes on the GPU outside TensorFlow's allocator, per process: kept out of
# each shared worker's memory limit, so that the workers on one GPU fit it together.
CONTEXT_MB = 500
QUERY = ("nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True)
class Gpu:
    index: int  # as nvidia-smi numbers it
    uuid: str
    memory_mb: int


@dataclass(frozen=True)
class Placement:
    """Where one worker trains. `device` is what its trials record ("cpu", "gpu:0");
    `visible` its CUDA_VISIBLE_DEVICES (None: left as it is); `memory_limit_mb` its share of a
    GPU that other workers use too (None: memory growth, the GPU is its alone); `threads` its
    share of the cores (None: TensorFlow's default, the whole machine)."""

    device: str = "cpu"
    visible: str | None = None
    memory_limit_mb: int | None = None
    threads: int | None = None


def cpu_cores(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: those it may run on, or fewer where its cgroup's CPU
    quota says so (a container's CPU limit, which the affinity mask does not show: in a pod
    limited to 4 CPUs on a 64-core node, `--workers auto` would otherwise start 64)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()
        return max(1, min(cores, int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or "max": no quota
        return cores


def parse_workers(value: str) -> int | None:
    """--workers as given: a count, or None for "auto"; anything else a DeviceError."""
    if value.strip().lower() == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise DeviceError(
            f"--workers takes a whole number of worker processes (1 or more) or `auto`, not "
            f"{value!r}. `--workers auto` starts one per GPU, or one per core on a machine "
            f"without GPUs."
        )
    return count


def visible_gpus(listing: str | None = None, environ: Mapping[str, str] | None = None) -> list[Gpu]:
    """The GPUs a worker may use: `listing` is nvidia-smi's answer to QUERY (None: ask it
    now; no nvidia-smi, or one that fails, is no GPUs), filtered and ordered as
    CUDA_VISIBLE_DEVICES in `environ` (default os.environ) says: indexes or UUIDs, up to the
    first it does not know, as CUDA reads it; empty or -1 hides them all."""
    environ = os.environ if environ is None else environ
    if listing is None:
        listing = _ask_nvidia_smi()
    gpus = []
    for line in listing.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 3 and fields[0].isdigit() and fields[2].isdigit():
            gpus.append(Gpu(int(fields[0]), fields[1], int(fields[2])))
    wanted = environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is None:
        return gpus
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in wanted.split(",")):
        match = [g for g in gpus if entry and (str(g.index) == entry or g.uuid.startswith(entry))]
        if not match or match[0] in chosen:
            break
        chosen.append(match[0])
    return chosen


def _ask_nvidia_smi() -> str:
    if shutil.which(QUERY[0]) is None:
        return ""
    try:
        done = subprocess.run(QUERY, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def plan(
    workers: int | None,
    gpus_per_worker: float | None,
    gpus: Sequence[Gpu],
    cores: int,
    memory_mb: int | None = None,
    most: int | None = None,
) -> list[Placement]:
    """One Placement per worker. `workers`: a count, or None for auto (one per GPU, or per
    `gpus_per_worker` share of one; without GPUs one per core, as many as `memory_mb` holds);
    `most`: the most workers the backend takes (None: any). A count of workers on GPUs is
    spread over them in turn; workers sharing a GPU each get an even share of its memory, or
    `gpus_per_worker` of it when given."""
    share = _checked_share(gpus_per_worker, gpus)
    per_gpu = max(1, int(1 / share + 1e-9)) if share else 1
    if workers is None:
        if gpus:
            workers = len(gpus) * per_gpu
        else:
            by_memory = (memory_mb // WORKER_MEMORY_MB) if memory_mb else cores
            workers = max(1, min(cores, by_memory))
        workers = min(workers, most) if most else workers
    threads = max(1, cores // workers) if workers > 1 else None
    if not gpus:
        return [Placement(threads=threads) for _ in range(workers)]
    if share and workers > len(gpus) * per_gpu:
        raise DeviceError(
            f"--workers {workers} with --gpus-per-worker {gpus_per_worker} needs "
            f"{workers * share:g} GPUs, and {len(gpus)} are visible here "
            f"({', '.join(f'gpu:{g.index}' for g in gpus)}). Run at most "
            f"{len(gpus) * per_gpu} workers, lower --gpus-per-worker, or give --workers auto."
        )
    on = [gpus[i % len(gpus)] for i in range(workers)]
    placements = []
    for gpu in on:
        sharing = on.count(gpu)
        fraction = share if share and share < 1 else (1 / sharing if sharing > 1 else None)
        limit = None if fraction is None else max(256, int(gpu.memory_mb * fraction) - CONTEXT_MB)
        placements.append(Placement(f"gpu:{gpu.index}", gpu.uuid, limit, threads))
    return placements


def _checked_share(gpus_per_worker: float | None, gpus: Sequence[Gpu]) -> float | None:
    if gpus_per_worker is None:
        return None
    if not 0 < gpus_per_worker <= 1:
        raise DeviceError(
            f"--gpus-per-worker takes the share of one GPU each worker uses, more than 0 and "
            f"at most 1 (0.5: two workers per GPU, each limited to half its memory), not "
            f"{gpus_per_worker:g}. A trial trains on one device, so a worker never takes more "
            f"than one GPU."
        )
    if not gpus:
        raise DeviceError(
            f"--gpus-per-worker {gpus_per_worker:g} asks for GPUs, and this machine shows "
            f"none (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them: "
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'not set')}). Leave the option out to "
            f"train on the CPU cores."
        )
    return gpus_per_worker


def pin(placement: Placement | None) -> None:
    """In a worker process, before TensorFlow is imported: show it only its GPU."""
    if placement is not None and placement.visible is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = placement.visible


def device_of(placement: Placement | None, gpus_seen: int) -> str:
    """What a worker's trials record as their device, from its placement and the GPUs
    TensorFlow sees in it: "gpu" for a GPU it was not pinned to (found without nvidia-smi,
    or a MIG slice), "cpu" when TensorFlow sees none (a CPU-only TensorFlow, say)."""
    if not gpus_seen:
        return "cpu"
    return placement.device if placement is not None and placement.visible else "gpu"


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total
