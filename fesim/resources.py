"""Memory budget: refuse work that would not fit before allocating it.

A hostile header (a 65535 x 65535 matrix) or an absurd option (a 0.05 mm mesh) must end in a
:class:`~fesim.errors.ResourceError` naming the size, not in the kernel's out-of-memory killer.
``FESIM_MEMORY_LIMIT_GB`` (environment) caps the budget below the machine's available memory.
"""

from __future__ import annotations

import os

from fesim.errors import ResourceError


def available_memory_bytes() -> int:
    """Bytes that a run may use: MemAvailable (Linux), else the physical memory, capped by
    ``FESIM_MEMORY_LIMIT_GB``.

    Raises
    ------
    ResourceError
        ``FESIM_MEMORY_LIMIT_GB`` is set but is not a positive number of GB.
    """
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):  # not Linux, or an unreadable /proc: ask the OS below
        avail = None
    if avail is None:
        avail = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    cap = os.environ.get("FESIM_MEMORY_LIMIT_GB")
    if cap:
        try:
            gb = float(cap)
        except ValueError:
            gb = float("nan")
        if not gb > 0:
            raise ResourceError(f"FESIM_MEMORY_LIMIT_GB={cap!r} is not a positive number of GB")
        avail = min(avail, int(gb * (1 << 30)))
    return avail


def check_budget(n_bytes: float, what: str, hint: str = "") -> None:
    """Raise :class:`ResourceError` when ``n_bytes`` exceed the available memory.

    Parameters
    ----------
    n_bytes : float
        Predicted peak allocation (bytes).
    what : str
        What would be allocated, for the message (e.g. ``"series of 512 x 512 x 9000 voxels"``).
    hint : str
        What the user can do, appended to the message.
    """
    budget = available_memory_bytes()
    if not n_bytes <= budget:  # also catches NaN
        more = f"; {hint}" if hint else ""
        raise ResourceError(f"{what} would need about {n_bytes / 1e9:.3g} GB of memory, more than the "
                            f"{budget / 1e9:.3g} GB available{more}")


def process_pool(max_workers: int):
    """A ``ProcessPoolExecutor`` whose workers are started fresh (``spawn``), not forked.

    The compiled kernels (:mod:`fesim.fem.kernels`) may run on an OpenMP thread pool, and a
    process that has used GNU OpenMP cannot safely fork: its forked children abort at their
    first parallel region. Spawned workers import fesim anew and own their thread pools.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))
