"""Registries drive the interfaces: one registration shows a new choice in ``fesim run --help``."""

from __future__ import annotations

import numpy as np
import pytest

from fesim.analysis.loadcases import LOAD_CASES, LoadCaseKind
from fesim.analysis.protocols import PROTOCOLS
from fesim.analysis.strength import ACCURACY
from fesim.cli import build_parser
from fesim.errors import InputError, MaterialError, SolverError
from fesim.fem.solvers import SOLVERS, LinearSolver, register
from fesim.io.formats import FORMATS, ExportFormat
from fesim.material import LAWS, DensityLaw
from fesim.mesh.kinds import MESHES
from fesim.pipeline import RunOptions


def _run_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices["run"].format_help().split())


@pytest.fixture
def dummies():
    """One dummy of each registry kind, unregistered afterwards."""
    law = LAWS.add(DensityLaw("dummylaw", "apparent", lambda rho: 1000.0 * rho, (0.0, 1.0), "test only"))

    @register("dummysolver", "a test-only back end")
    class Dummy(LinearSolver):
        def _setup(self, A, reuse):
            pass

    case = LOAD_CASES.add(LoadCaseKind("dummycase", "a test-only load case", lambda mesh, frame, screws: []))
    fmt = FORMATS.add(ExportFormat("dummyfmt", "a test-only format", "model.dummy",
                                   lambda path, mesh, E, nu, sets, steps: None))
    yield law, Dummy, case, fmt
    LAWS.remove("dummylaw")
    SOLVERS.remove("dummysolver")
    LOAD_CASES.remove("dummycase")
    FORMATS.remove("dummyfmt")


def test_registered_dummies_appear_in_help_and_choices(dummies):
    text = _run_help()
    for name, desc in (("dummylaw", "dummylaw (apparent density)"), ("dummysolver", "a test-only back end"),
                       ("dummycase", "a test-only load case"), ("dummyfmt", "a test-only format")):
        assert name in text and desc in text
    args = build_parser().parse_args(["run", "scan", "--out", "o", "--law", "dummylaw",
                                      "--solver", "dummysolver", "--export", "inp,dummyfmt"])
    assert (args.law, args.solver, args.export) == ("dummylaw", "dummysolver", ("inp", "dummyfmt"))
    opts = RunOptions.from_dict({"law": "dummylaw", "solver": "dummysolver", "export": ("dummyfmt",)})
    assert opts.solver == "dummysolver"


def test_dummies_gone_after_teardown():
    text = _run_help()
    assert "dummylaw" not in text and "dummysolver" not in text and "dummyfmt" not in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "scan", "--out", "o", "--solver", "dummysolver"])


def test_every_registered_entry_is_a_cli_choice():
    """The CLI's choices are the registries' names (pmg included, which the CLI once omitted)."""
    parser = build_parser()
    run = next(a for a in parser._actions if a.dest == "command").choices["run"]
    choices = {a.dest: tuple(a.choices) for a in run._actions if a.choices}
    assert choices["solver"] == ("auto",) + SOLVERS.names() and "pmg" in choices["solver"]
    assert choices["law"] == LAWS.names()
    assert choices["mesh"] == MESHES.names() == ("tet", "voxel")
    assert choices["strength_accuracy"] == ACCURACY.names() == ("standard", "screening")
    assert choices["protocol"] == PROTOCOLS.names()
    assert FORMATS.names() == ("inp", "feb") and LOAD_CASES.names() == ("compression", "pullout")


def test_unknown_names_refused_with_the_choices():
    with pytest.raises(InputError, match="solver must be one of auto, direct"):
        RunOptions.from_dict({"solver": "gmres"})
    with pytest.raises(InputError, match="strength_accuracy must be one of standard, screening"):
        RunOptions.from_dict({"strength_accuracy": "fast"})
    with pytest.raises(InputError, match=r"unknown export format\(s\) \['vtk'\]: use inp, feb"):
        RunOptions.from_dict({"export": ("inp", "vtk")})
    with pytest.raises(SolverError, match="unknown solver 'gmres'; choose from direct"):
        SOLVERS.get_or_raise("gmres")
    with pytest.raises(SolverError, match="already registered"):
        register("amg", "again")(type("Again", (LinearSolver,), {}))
    with pytest.raises(MaterialError, match="unknown density-modulus law"):
        LAWS.get_or_raise("nope")
    assert MESHES.get_or_raise("tet").name == "tet"


def test_registered_format_is_written(tmp_path, dummies):
    """An export format is one registration: export_model calls its writer with the case steps."""
    from fesim.analysis.loadcases import LoadCase
    from fesim.io.formats import export_model
    from fesim.mesh.tetmesh import box_mesh

    seen = {}
    FORMATS.remove("dummyfmt")
    FORMATS.add(ExportFormat("dummyfmt", "records its call", "model.dummy",
                             lambda path, mesh, E, nu, sets, steps: seen.update(path=path, sets=sets, steps=steps)))
    mesh = box_mesh((2, 2, 2), (4.0, 4.0, 4.0))
    z = mesh.points[:, 2]
    case = LoadCase("compression", np.flatnonzero(z == 0), np.flatnonzero(z == 4), np.array([0, 0, -1.0]))
    written = export_model(tmp_path, mesh, np.full(mesh.n_elements, 100.0), np.full(mesh.n_elements, 0.3),
                           [case], ["dummyfmt", "inp"])
    assert written == [tmp_path / "model.dummy", tmp_path / "model.inp"]
    assert seen["path"] == tmp_path / "model.dummy" and set(seen["sets"]) == {"COMPRESSION_FIXED", "COMPRESSION_DRIVEN"}
    assert seen["steps"][0]["boundary"][3] == ("COMPRESSION_DRIVEN", 3, 3, pytest.approx(-0.1))
    assert "*STEP" in (tmp_path / "model.inp").read_text()
