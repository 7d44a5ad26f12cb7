"""Model export formats (``--export``): the FE model written for other solvers.

Each format is registered once in :data:`FORMATS` with its writer; the CLI and
:class:`fesim.pipeline.RunOptions` take names and descriptions from there, and
:func:`export_model` writes every requested one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fesim.errors import InputError
from fesim.io.abaqus import write_inp
from fesim.io.febio import write_feb
from fesim.registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    """An export format: ``write(path, mesh, E, nu, node_sets, steps)`` writes ``filename``.

    ``node_sets`` maps set names to node ids (0-based); ``steps`` are the load cases as
    :func:`fesim.io.abaqus.write_inp` takes them (a format may ignore them).
    """

    name: str
    description: str
    filename: str
    write: Callable


#: Export formats by name.
FORMATS = Registry("export format")
FORMATS.add(ExportFormat("inp", "CalculiX/Abaqus input deck, one static step per load case", "model.inp",
                         lambda path, mesh, E, nu, node_sets, steps:
                         write_inp(path, mesh, E, nu, node_sets=node_sets, steps=steps)))
FORMATS.add(ExportFormat("feb", "FEBio 4.0 model (mesh, materials, node sets)", "model.feb",
                         lambda path, mesh, E, nu, node_sets, steps: write_feb(path, mesh, E, nu, node_sets=node_sets)))


def case_sets_and_steps(cases, delta_mm: float = 0.1) -> tuple[dict, list]:
    """Node sets ``<CASE>_FIXED`` / ``<CASE>_DRIVEN`` and one step per load case, the driven
    nodes displaced by ``delta_mm`` (mm) along the case's direction, the fixed ones held."""
    sets, steps = {}, []
    for c in cases:
        fixed, driven = f"{c.name}_FIXED".upper(), f"{c.name}_DRIVEN".upper()
        sets[fixed], sets[driven] = c.fixed, c.driven
        bnd = [(fixed, 1, 3, 0.0)] + [(driven, k + 1, k + 1, float(delta_mm * c.direction[k])) for k in range(3)]
        steps.append({"name": c.name, "boundary": bnd})
    return sets, steps


def check_formats(formats) -> tuple:
    """``formats`` as a tuple of registered names; :class:`InputError` naming the unknown ones."""
    formats = tuple(dict.fromkeys(formats))
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InputError(f"unknown export format(s) {unknown}: use {', '.join(FORMATS.names())}")
    return formats


def export_model(out, mesh, E, nu, cases, formats, delta_mm: float = 0.1) -> list[Path]:
    """Write the model (per-element ``E`` MPa and ``nu``) with its load cases in each of
    ``formats`` into folder ``out``; returns the written paths."""
    sets, steps = case_sets_and_steps(cases, delta_mm)
    written = []
    for name in check_formats(formats):
        fmt = FORMATS[name]
        path = Path(out) / fmt.filename
        fmt.write(path, mesh, np.asarray(E, float), np.asarray(nu, float), sets, steps)
        written.append(path)
    return written
