"""Material tables of solver decks: per-element moduli grouped into a few materials."""

from __future__ import annotations

import numpy as np

from fesim.errors import MeshError


def bin_materials(E: np.ndarray, nu: np.ndarray, n_bins: int | None = 50) -> tuple[np.ndarray, np.ndarray, dict]:
    """Group elements into at most ``n_bins`` materials per Poisson's ratio (log-spaced E bins).

    ``n_bins=None`` keeps every distinct ``(E, nu)`` as its own material (exact decks).

    Returns
    -------
    bin_id : ndarray (M,) int
        Material index of every element (0-based, dense).
    table : ndarray (K, 2)
        (E, nu) of each material; E is the mean of its elements' E (MPa).
    error : dict
        ``n_materials``, ``max_rel_error`` and ``mean_rel_error`` of E after binning.
    """
    E = np.asarray(E, float)
    nu = np.asarray(nu, float)
    if n_bins is None:
        table, bin_id = np.unique(np.column_stack([E, nu]), axis=0, return_inverse=True)
        return bin_id.ravel(), table, {"n_materials": len(table), "max_rel_error": 0.0, "mean_rel_error": 0.0}
    if n_bins < 1:
        raise MeshError("n_bins must be at least 1")
    if np.any(E <= 0):
        raise MeshError("all Young's moduli must be positive to bin materials")
    keys = np.zeros(len(E), np.int64)
    _, nu_id = np.unique(nu, return_inverse=True)
    for g in np.unique(nu_id):
        sel = nu_id == g
        le = np.log(E[sel])
        uniq = np.unique(E[sel])
        if len(uniq) <= n_bins:
            k = np.searchsorted(uniq, E[sel])
        else:
            edges = np.linspace(le.min(), le.max(), n_bins + 1)
            k = np.clip(np.searchsorted(edges, le, side="right") - 1, 0, n_bins - 1)
        keys[sel] = g * (n_bins + 1) + k
    _, bin_id = np.unique(keys, return_inverse=True)
    bin_id = bin_id.ravel()
    k = bin_id.max() + 1
    cnt = np.bincount(bin_id, minlength=k)
    e_bin = np.bincount(bin_id, weights=E, minlength=k) / cnt
    nu_bin = np.bincount(bin_id, weights=nu, minlength=k) / cnt
    rel = np.abs(e_bin[bin_id] - E) / E
    err = {"n_materials": int(k), "max_rel_error": float(rel.max()), "mean_rel_error": float(rel.mean())}
    return bin_id, np.column_stack([e_bin, nu_bin]), err
