"""BLAS threads during the sparse solves.

fesim's linear algebra is sparse (scipy, pyamg, numba kernels); dense BLAS appears only as
level-1 operations on long vectors (dot products and norms in CG, Lanczos, energies). A
multi-threaded BLAS splits each of those across cores and then keeps its worker threads
spinning between calls, where they compete with the single-threaded sparse products that
follow. On the 2-core reference VM, one p-multigrid CG solve of a 0.32 M-unknown tet10 model
took 14.0-15.3 s with OpenBLAS's default two threads and 5.9-7.3 s with one, with identical
iterates (benchmarks/RESULTS.md). :func:`single_blas_thread` therefore limits BLAS to one
thread for the duration of fesim's solves and analyses (threadpoolctl), and restores the
caller's setting afterwards.
"""

from __future__ import annotations

import contextlib

_controller = None


def _get_controller():
    """threadpoolctl's view of the loaded BLAS libraries (created once, after scipy's BLAS is
    loaded by the solver modules), or None when threadpoolctl is unavailable."""
    global _controller
    if _controller is None:
        try:
            import scipy.linalg  # noqa: F401  (loads scipy's own BLAS, so that it is limited too)
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller or None


@contextlib.contextmanager
def single_blas_thread():
    """Context manager: BLAS libraries run one thread inside, the previous setting after."""
    controller = _get_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=1, user_api="blas"):
        yield
