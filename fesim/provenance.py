"""What produced a result: fesim and library versions, options, and a hash of the inputs.

:func:`code_fingerprint` hashes fesim's own source files: the version does not change between
commits, the fingerprint changes with any edit. The study runner keys its resume on it.

Recorded in every ``result.json`` under ``provenance`` so that a rerun can be checked: same
versions, same options and same input hash must give the same numbers (to 1e-9 relative;
see docs/robustness.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
from importlib import metadata
from pathlib import Path

#: Libraries whose versions can change a result.
LIBRARIES = ("numpy", "scipy", "pyamg", "pydicom", "nibabel", "meshio", "matplotlib", "pylibjpeg",
             "pylibjpeg-openjpeg", "pylibjpeg-rle", "scikit-sparse", "pypardiso", "numba")


def library_versions() -> dict:
    """``{name: version}`` of Python and the installed :data:`LIBRARIES` (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def input_sha256(path) -> str:
    """SHA-256 over the bytes of a file, or of every file below a folder.

    For a folder the files are taken in sorted order of their relative paths and each path
    enters the hash with its bytes, so renaming, adding or changing a file changes it.
    Returns "" when ``path`` is None.
    """
    if path is None:
        return ""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(Path(r) / f for r, _, names in os.walk(path) for f in names)
        for f in files:
            h.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
            _feed(h, f)
    else:
        _feed(h, path)
    return h.hexdigest()


def _feed(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 over the source files (``*.py``) of the fesim package this process imported.

    Files are taken in sorted order of their paths relative to the package folder and each path
    enters the hash with its bytes, as in :func:`input_sha256`, so that editing, adding, removing
    or renaming a module changes it; compiled caches (``__pycache__``) are left out. Computed
    once per process (the code a process runs is the code it imported).
    """
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted((f for f in root.rglob("*.py") if "__pycache__" not in f.parts),
                   key=lambda f: f.relative_to(root).as_posix())
    for f in files:
        h.update(f.relative_to(root).as_posix().encode("utf-8") + b"\0")
        _feed(h, f)
    return h.hexdigest()


def build_record() -> dict:
    """``{"version": ..., "code_sha256": ...}``: which fesim build produced a result."""
    from fesim import __version__

    return {"version": __version__, "code_sha256": code_fingerprint()}


def provenance(scan, options: dict, labels=None) -> dict:
    """The ``provenance`` record of one result (versions, options, input hashes)."""
    from fesim import __version__

    return {
        "fesim_version": __version__,
        "fesim_code_sha256": code_fingerprint(),
        "libraries": library_versions(),
        "options": options,
        "input_sha256": input_sha256(scan),
        "labels_sha256": input_sha256(labels),
    }
