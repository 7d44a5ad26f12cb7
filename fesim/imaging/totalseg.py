"""Optional deep-learning segmentation of the CT with TotalSegmentator, where installed.

TotalSegmentator (Wasserthal et al. 2023, Apache-2.0) is an optional extra
(``pip install 'fesim[totalseg]'``); it is imported only here, when called. Its model
weights are downloaded by TotalSegmentator itself on the user's machine at first use and
carry their own licence terms (some tasks need a licence key); fesim ships none of them.
The classical route (a label map from elsewhere, or fesim's own threshold segmentation)
stays the default.

The CT is handed over as a NIfTI written from fesim's own reading of the scan, so the label
map TotalSegmentator returns lies on the grid ``fesim run`` reads for the same scan.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fesim.errors import DependencyError, SegmentationError
from fesim.imaging.labels import read_label_map, vertebra_names
from fesim.imaging.nifti import labels_on_grid, write_nifti
from fesim.imaging.volume import Volume

INSTALL_HINT = "pip install 'fesim[totalseg]'"
#: TotalSegmentator v2 class names of the spine (its ``roi_subset``): T1..S1 and the sacrum.
SPINE_ROIS = tuple(f"vertebrae_{lv}" for lv in [f"T{n}" for n in range(1, 13)]
                   + [f"L{n}" for n in range(1, 6)] + ["S1"]) + ("sacrum",)
DEVICES = ("gpu", "cpu", "mps")


def totalsegmentator_api():
    """TotalSegmentator's Python entry point ``totalsegmentator(input, output, ...)``.

    Raises
    ------
    DependencyError
        TotalSegmentator is not installed (the message says how to install it).
    """
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError:
        raise DependencyError(f"TotalSegmentator is not installed; install it with: {INSTALL_HINT} "
                              "(Apache-2.0; it downloads its model weights itself, under their own "
                              "licence terms)") from None
    return totalsegmentator


def segment_ct(ct: Volume, fast: bool = False, device: str = "gpu",
               roi_subset=SPINE_ROIS, workdir=None) -> Volume:
    """Label map of a CT by TotalSegmentator (task ``total``, one multi-label file).

    Parameters
    ----------
    ct : Volume
        CT in HU (LPS mm), as :func:`fesim.pipeline.load_image` reads it.
    fast : bool
        TotalSegmentator's 3 mm model (faster, coarser).
    device : {"gpu", "cpu", "mps"}
        Passed on; TotalSegmentator falls back to the CPU without a GPU.
    roi_subset : sequence of str or None
        Classes to segment (default the spine, :data:`SPINE_ROIS`); None for all.
    workdir : path-like, optional
        Where the temporary NIfTI files go (default the system's temporary folder).

    Returns
    -------
    Volume
        uint label map on the CT's grid with ``meta["label_names"]`` from the file.

    Raises
    ------
    DependencyError
        TotalSegmentator is not installed.
    SegmentationError
        TotalSegmentator failed, wrote nothing, or its map names no vertebra.
    """
    run = totalsegmentator_api()
    if device not in DEVICES:
        raise SegmentationError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    with tempfile.TemporaryDirectory(prefix="fesim-totalseg-", dir=workdir) as tmp:
        src = write_nifti(ct, Path(tmp) / "ct.nii.gz")
        out = Path(tmp) / "labels.nii.gz"
        try:
            run(str(src), str(out), ml=True, task="total", fast=bool(fast),
                roi_subset=list(roi_subset) if roi_subset else None, device=device)
        except Exception as exc:  # TotalSegmentator's own failures, of many types
            raise SegmentationError(f"TotalSegmentator failed: {type(exc).__name__}: {exc}") from None
        if not out.is_file():
            raise SegmentationError("TotalSegmentator wrote no label map")
        labels = read_label_map(out)
    labels = labels_on_grid(ct, labels)
    if not vertebra_names(labels.meta.get("label_names")):
        raise SegmentationError("TotalSegmentator's label map names no vertebra (no spine in the field of "
                                "view, or no label table in its output)")
    labels.meta["source"] = "TotalSegmentator"
    return labels
