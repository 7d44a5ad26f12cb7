"""The whole chain for one scan: image -> BMD -> mask and screws -> mesh -> FE -> result.json.

:func:`run_scan` is what ``fesim run`` and the cohort runner call. Each stage's output is a
small object handed to the next stage; the stage timings and every reported number are
computed here from the image, never assumed.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, asdict, fields
from pathlib import Path

import numpy as np

from . import __version__
from .errors import InputError
from .fem.threads import single_blas_thread
from .io.atomic import atomic_write_json
from .provenance import provenance
from .results import AnalysisResult, ScanResult
from .imaging.volume import Volume
from .imaging.screwplan import TIP_SHAPES, ScrewPlan
from .imaging.segmentation import BODY_CODES, POSTERIOR_CODES
from .material import ASH_EQUATIONS, LAWS, check_ash_equation, check_bmd_material

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Options of one scan's analysis (CLI flags map 1:1 onto these).

    Lengths in mm, densities in mg/cm^3 (K2HPO4-equivalent unless ``rod_material="HA"``).
    """

    labels: str | None = None               # label map (NIfTI) on the CT grid
    level: str = "L4"                       # vertebra to analyse (label map, or found by counting from the sacrum)
    seed_point: tuple | None = None         # a point (LPS mm) inside the body: isolate that vertebra, no counting
    label_values: str | None = None         # "1,2,3" accepted as one vertebra (overrides level)
    convention: str = "auto"                # label numbering of the map: auto (detected) or a registered one
    series_uid: str | None = None           # DICOM series to read when a folder holds several
    calibration: str = "auto"               # auto | phantom | internal | none
    rod_densities: tuple = (0.0, 50.0, 100.0, 200.0)
    rod_material: str = "K2HPO4"
    screws: str = "both"                    # none | left | right | both
    trajectory: str = "traditional"         # traditional | cortical
    screw_length_mm: float | None = None
    screw_diameter_mm: float | None = None
    screw_tip: str = "round"                # round (hemispherical, default) | flat
    screw_entry: tuple | None = None        # user screw: entry (LPS mm) ...
    screw_direction: tuple | None = None    # ... and direction (LPS)
    caps: str = "none"                      # none | pmma: end caps generated on the endplates
    cap_thickness_mm: float = 5.0
    cap_shape: str = "flat"                 # flat (up to a plane) | extruded (endplate moved along the axis)
    cap_labels: str | None = None           # label values (e.g. discs) used as caps instead
    mesh: str = "tet"                       # tet (conforming tet4/tet10) | voxel (hex8, one per voxel)
    voxel_size_mm: float | None = None      # voxel mesh edge; None: image spacing if isotropic and <= 1 mm, else 1
    mesh_size_mm: float = 2.0
    screw_mesh_size_mm: float = 1.0
    element_order: int = 2                  # 2 = tet10 (tet4 locks around a bonded screw)
    law: str = "keyak"                      # key of fesim.material.LAWS
    ash_conversion: str = "identity"        # QCT density -> ash density: key of fesim.material.ASH_EQUATIONS
    nu_bone: float = 0.3
    strength: str = "nonlinear"             # nonlinear | surrogate
    solver: str = "auto"
    screw_roi_radius_mm: float | None = None
    write_vtk: bool = True
    export: tuple = ()                      # solver decks to write: "inp" (CalculiX/Abaqus), "feb" (FEBio)
    max_steps: int = 60
    strength_accuracy: str = "standard"     # standard | screening (fewer, looser secant iterations)
    protocol: str = "fesim"                 # fesim | spine-benchmark (fesim.analysis.protocols)
    keep_identifiers: bool = False          # opt-in: copy DICOM patient/study identifiers to result.json

    @classmethod
    def from_dict(cls, d: dict) -> "RunOptions":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}")
        from .analysis.protocols import PROTOCOLS
        from .analysis.strength import ACCURACY
        from .fem.solvers import SOLVERS
        from .imaging.caps import CAP_SHAPES
        from .io.formats import check_formats
        from .mesh.kinds import MESHES

        def one_of(name, value, choices):
            if value not in choices:
                raise InputError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

        protocol = d.get("protocol", "fesim")
        one_of("protocol", protocol, PROTOCOLS.names())
        opts = cls(**{**d, **PROTOCOLS[protocol].options})
        one_of("cap_shape", opts.cap_shape, CAP_SHAPES)
        one_of("screw_tip", opts.screw_tip, TIP_SHAPES)
        one_of("mesh", opts.mesh, MESHES.names())
        if opts.voxel_size_mm is not None and not opts.voxel_size_mm > 0:
            raise InputError(f"voxel_size_mm must be positive, got {opts.voxel_size_mm}")
        one_of("strength_accuracy", opts.strength_accuracy, ACCURACY.names())
        one_of("solver", opts.solver, ("auto",) + SOLVERS.names())
        check_formats(opts.export)
        if str(opts.convention).lower() != "auto":
            from .imaging.labels import LABEL_CONVENTIONS, canonical_convention

            LABEL_CONVENTIONS.get_or_raise(canonical_convention(opts.convention))
        LAWS.get_or_raise(opts.law)
        ASH_EQUATIONS.get_or_raise(opts.ash_conversion)
        check_bmd_material(opts.rod_material)
        if opts.calibration in ("phantom", "none"):  # BMD material known now: refuse before any work
            check_ash_equation(opts.ash_conversion, opts.rod_material)
        check_numbers(opts)
        return opts


class _Timer:
    """Wall time per stage; a stage entered in several parts is timed in sum and announced once."""

    def __init__(self, progress=None):
        self.t = {}
        self.progress = progress

    def __call__(self, name):
        timer = self

        class _Ctx:
            def __enter__(self):
                if timer.progress is not None and name not in timer.t:
                    timer.progress.stage(name)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t0
                timer.t[name] = timer.t.get(name, 0.0) + dt
                log.info("stage %s %s in %.2f s", name, "failed" if exc[0] else "done", dt)

        return _Ctx()


def load_image(scan, opts: RunOptions) -> Volume:
    """Read a DICOM folder or a NIfTI file into a HU (or density) volume."""
    scan = Path(scan)
    if not scan.exists():
        if scan.is_symlink():
            try:
                scan.stat()
            except OSError as exc:
                raise InputError(f"{scan} is a broken symbolic link or a link loop ({exc.strerror})") from None
        raise InputError(f"no such file or folder: {scan}")
    name = scan.name.lower()
    if scan.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        from .imaging.nifti import read_nifti

        return read_nifti(scan, kind="ct")
    from .imaging.dicom import read_dicom_series

    return read_dicom_series(scan, series_uid=opts.series_uid)


def calibrate(hu: Volume, opts: RunOptions):
    """HU -> BMD calibration as chosen by ``opts.calibration`` (auto: phantom, else internal)."""
    from .imaging import calibration as cal
    from .errors import CalibrationError

    method = opts.calibration
    if hu.meta.get("units") in ("mg/cm3", "mg/cm^3") or method == "none":
        c = cal.no_calibration(material=opts.rod_material)
    elif method == "phantom":
        c = cal.phantom_calibration(hu, opts.rod_densities, material=opts.rod_material)
    elif method == "internal":
        c = cal.internal_calibration(hu)
    elif method == "auto":
        try:
            c = cal.phantom_calibration(hu, opts.rod_densities, material=opts.rod_material)
        except CalibrationError as exc:
            warnings.warn(f"phantom calibration failed ({exc}); using phantomless internal calibration")
            c = cal.internal_calibration(hu)
    else:
        raise InputError(f"unknown calibration {method!r}: use phantom, internal, none or auto")
    return c, c.apply(hu)


def segment(bmd: Volume, opts: RunOptions, hu: Volume | None = None) -> tuple[Volume, Volume | None]:
    """Vertebra mask from a label map, a seed point, or automatic identification.

    Without a label map, ``opts.seed_point`` (LPS mm) isolates the vertebra containing it;
    otherwise the level is found by counting from the sacrum
    (:func:`fesim.imaging.vertebrae.isolate_level`). A scan holding a single vertebra and no
    column to count along (the synthetic phantom) is taken as ``opts.level`` with a warning.
    The surface of a label-map, seed-point or identified mask is then placed by one
    partial-volume rule, whatever drew it (:func:`fesim.imaging.segmentation.refine_surface`;
    the threshold segmentation of a single vertebra places its own by the local level).
    Every mask, whatever its source, passes :func:`fesim.imaging.vertebrae.check_vertebra_mask`.
    Returns the mask and the label map on the CT grid (None without one).
    """
    from .imaging import segmentation as seg
    from .imaging import vertebrae as vt

    if opts.labels:
        from .imaging.labels import parse_label_values, read_label_map, resolve_level_in_map
        from .imaging.nifti import labels_on_grid

        labels = labels_on_grid(bmd, read_label_map(opts.labels))
        if opts.label_values:
            values, how = parse_label_values(opts.label_values), "label values given"
        else:
            values, how = resolve_level_in_map(opts.level, labels, opts.convention)
            log.info("vertebra %s = label value(s) %s: %s", opts.level, sorted(values), how)
        mask = seg.mask_from_labels(labels, values)
        mask.meta["label_convention"] = how
        if mask.meta.get("truncated"):
            from .errors import SegmentationError

            faces = ", ".join(mask.meta.get("truncated_faces") or []) or "image border"
            raise SegmentationError(f"vertebra {opts.label_values or opts.level} is truncated: it is cut by "
                                    f"the image border ({faces}); a partial vertebra cannot be analysed")
        other = (labels.data != 0) & ~np.isin(labels.data, sorted(mask.meta["label_values"]))
        mask = seg.refine_surface(bmd, mask, other_bone=other)
        _check(mask, None if opts.label_values else opts.level, "label-map mask")
        return mask, labels
    image = hu if hu is not None else bmd
    if opts.seed_point is not None:
        mask, others = vt.isolate_at_seed(image, opts.seed_point, with_others=True)
        if others is not None:
            mask = seg.refine_surface(image, mask, other_bone=others)
        seed = ", ".join(f"{float(c):g}" for c in opts.seed_point)
        _check(mask, None, f"vertebra at seed point ({seed}) mm LPS")
        return mask, None
    try:
        mask, others = vt.isolate_level(image, opts.level, with_others=True)
        mask = seg.refine_surface(image, mask, other_bone=others)
        source = f"automatic {opts.level} mask"
    except vt.VertebraIdentificationError as exc:
        if not vt.single_vertebra_in_view(image):
            raise
        warnings.warn(f"a single vertebra in the field of view and no landmark to count from ({exc}); "
                      f"it is taken as {opts.level}, its level not verified: pass --labels or --seed-point to be sure")
        mask = seg.segment_vertebra(bmd)
        source = "single-vertebra mask"
    _check(mask, opts.level if source.startswith("automatic") else None, source)
    return mask, None


def _check(mask: Volume, level, source: str) -> None:
    from .imaging.vertebrae import check_vertebra_mask

    for w in check_vertebra_mask(mask, level, source):
        warnings.warn(w)


def end_caps(mask: Volume, labels: Volume | None, regions: Volume, frame: dict, opts: RunOptions):
    """``(lower, upper)`` cap masks as the options ask, or None."""
    from .imaging import caps

    if opts.cap_labels:
        if labels is None:
            raise InputError("--cap-labels needs a label map (--labels)")
        from .imaging.labels import parse_label_values

        return caps.caps_from_labels(labels, parse_label_values(opts.cap_labels), mask, frame)
    if opts.caps == "pmma":
        return caps.generated_caps(mask, np.isin(regions.data, BODY_CODES), frame, opts.cap_thickness_mm,
                                   shape=opts.cap_shape)
    if opts.caps != "none":
        raise InputError(f"--caps must be none or pmma, not {opts.caps!r}")
    return None


def check_numbers(opts: RunOptions) -> None:
    """Raise :class:`~fesim.errors.OptionError` for a non-finite or non-positive size, a zero
    screw direction or a non-finite screw entry (before any work is done)."""
    from .errors import OptionError

    positive = ("mesh_size_mm", "screw_mesh_size_mm", "cap_thickness_mm", "screw_length_mm",
                "screw_diameter_mm", "screw_roi_radius_mm")
    for name in positive:
        v = getattr(opts, name)
        if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
            raise OptionError(f"--{name.replace('_mm', '').replace('_', '-')} must be a positive number of mm, "
                              f"got {v!r}")
    for name in ("screw_entry", "screw_direction"):
        v = getattr(opts, name)
        if v is None:
            continue
        arr = np.asarray(v, dtype=float) if np.ndim(v) == 1 and len(v) == 3 else None
        if arr is None or not np.all(np.isfinite(arr)):
            raise OptionError(f"--{name.replace('_', '-')} must be three finite numbers x,y,z, got {v!r}")
        if name == "screw_direction" and np.linalg.norm(arr) < 1e-9:
            raise OptionError(f"--screw-direction {v!r} is the zero vector; give the screw axis, "
                              f"head to tip, e.g. 0,1,0")
    if not (np.isfinite(opts.nu_bone) and -1 < opts.nu_bone < 0.5):
        raise OptionError(f"nu_bone must lie in (-1, 0.5), got {opts.nu_bone!r}")
    if not (isinstance(opts.max_steps, int) and opts.max_steps >= 1):
        raise OptionError(f"max_steps must be a positive integer, got {opts.max_steps!r}")


def check_model_size(mask: Volume, screws, opts: RunOptions) -> None:
    """Predict the model's memory from the bone volume and the element sizes and raise
    :class:`~fesim.errors.ResourceError` before meshing when it cannot fit.

    Counts: ~6 tetrahedra per lattice cube of ``mesh_size_mm`` in the bone, the same at
    ``screw_mesh_size_mm`` in a 3 mm shell around each screw; ~1.2 (tet4) or ~10 (tet10) KB
    per element for the mesh, the stiffness matrix and the solver.
    """
    from .resources import check_budget

    bone_mm3 = float(np.count_nonzero(mask.data)) * float(np.prod(mask.spacing))
    n = 6.0 * bone_mm3 / opts.mesh_size_mm ** 3
    for s in screws:
        r = 0.5 * s.diameter_mm + 3.0
        n += 6.0 * np.pi * r * r * s.length_mm / opts.screw_mesh_size_mm ** 3
    per = 10e3 if opts.element_order == 2 else 1.2e3
    check_budget(n * per, f"a model of about {n / 1e6:.3g} million elements (bone {bone_mm3 / 1e3:.3g} cm^3 "
                 f"at {opts.mesh_size_mm:g} mm, screws at {opts.screw_mesh_size_mm:g} mm)",
                 "use a larger --mesh-size / --screw-mesh-size")


def plan(mask: Volume, regions: Volume, opts: RunOptions) -> list[ScrewPlan]:
    from .imaging import planning

    if opts.screw_entry is not None or opts.screw_direction is not None:
        if opts.screw_entry is None or opts.screw_direction is None:
            raise InputError("a user screw needs both --screw-entry and --screw-direction")
        s = ScrewPlan("user", opts.screw_entry, opts.screw_direction,
                      length_mm=opts.screw_length_mm or 40.0, diameter_mm=opts.screw_diameter_mm or 6.5,
                      trajectory="user", tip_shape=opts.screw_tip)
        planning.check_screw(mask, s)
        return [s]
    if opts.screws == "none":
        return []
    sides = {"both": ("left", "right"), "left": ("left",), "right": ("right",)}.get(opts.screws)
    if sides is None:
        raise InputError(f"--screws must be none, left, right or both, not {opts.screws!r}")
    screws = planning.plan_screws(mask, regions=regions, sides=sides, trajectory=opts.trajectory,
                                  length_mm=opts.screw_length_mm, diameter_mm=opts.screw_diameter_mm)
    return [dataclasses.replace(sc, tip_shape=opts.screw_tip) for sc in screws]


def bmd_measures(bmd: Volume, mask: Volume, regions: Volume, frame: dict, screws, opts) -> dict:
    """The BMD measures of :class:`~fesim.results.ScanResult` (its keyword arguments)."""
    from .imaging import bmd as bm

    body = np.isin(regions.data, BODY_CODES)
    posterior = np.isin(regions.data, POSTERIOR_CODES)  # kept out of the body's partial-volume margin
    per = [bm.screw_vbmd(bmd, s, mask, radius_mm=opts.screw_roi_radius_mm) for s in screws]
    return dict(vbmd_trabecular_mg_cm3=bm.trabecular_vbmd(bmd, body, axis=frame["body_axis"],
                                                         center=frame["body_center"]),
                vbmd_integral_mg_cm3=bm.integral_vbmd(bmd, body, exclude=posterior),
                abmd_g_cm2=bm.areal_bmd(bmd, body, ap_axis=frame["ap_axis"], exclude=posterior),
                vbmd_screw_mg_cm3=float(np.mean(per)) if per else float("nan"),
                vbmd_screw_per_screw_mg_cm3=per)


def export_models(out: Path, mesh, mat, cases, formats, delta_mm: float = 0.1) -> list[Path]:
    """Write the model for other solvers in each of ``formats`` (:data:`fesim.io.formats.FORMATS`:
    ``model.inp`` with one static step per load case, the driven nodes displaced by
    ``delta_mm``; ``model.feb`` with mesh, materials and node sets)."""
    from .io.formats import export_model

    return export_model(out, mesh, mat.E, mat.nu, cases, formats, delta_mm)


def run_scan(scan, out_dir, progress=None, longitudinal: str = "off", baseline=None, **options) -> dict:
    """Analyse one scan end to end and write ``out_dir/result.json`` (and VTK files).

    Parameters
    ----------
    scan : path of a DICOM folder or a NIfTI CT file
    out_dir : output folder (created)
    progress : :class:`fesim.progress.RunProgress`-like, optional
        Told of each stage and load step (``stage``, ``cases``, ``step_callback``).
    longitudinal : {"off", "plan", "mesh"}
        Longitudinal consistency (:mod:`fesim.longitudinal`). Not "off" and no ``baseline``:
        this scan is a baseline and leaves ``baseline.npz`` in ``out_dir``.
    baseline : path, optional
        Output folder of this scan's baseline run: the scan is a follow-up, registered to it
        (refused with :class:`~fesim.errors.RegistrationError` when it does not register).
    **options : fields of :class:`RunOptions`

    Returns
    -------
    dict
        The contents of ``result.json`` (:meth:`fesim.results.ScanResult.to_dict`; read it back
        with :meth:`~fesim.results.ScanResult.from_dict`).
    """
    from .longitudinal import check_mode, load_baseline

    opts = RunOptions.from_dict(options)
    check_mode(longitudinal)
    if longitudinal == "mesh" and opts.mesh != "tet":
        from .errors import OptionError

        raise OptionError("longitudinal mode 'mesh' reuses a tetrahedral baseline mesh; use --mesh tet or mode 'plan'")
    if baseline is not None and longitudinal == "off":
        raise InputError("a baseline is given but longitudinal consistency is off; use plan or mesh")
    link = None
    if longitudinal != "off":
        link = (longitudinal, load_baseline(baseline) if baseline is not None else None)
    with warnings.catch_warnings(record=True) as caught, single_blas_thread():
        warnings.simplefilter("always")
        result = _run(scan, out_dir, opts, progress, link)
    result.warnings = sorted({str(w.message) for w in caught})
    for w in caught:  # hand them on to the caller's handlers (the CLI prints one line each)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    out = result.to_dict()
    atomic_write_json(Path(out_dir) / "result.json", out)
    return out


def _run(scan, out_dir, opts: RunOptions, progress=None, link=None) -> ScanResult:
    from .analysis.loadcases import BodyFrame, load_cases
    from .analysis.outputs import write_case_outputs
    from .analysis.protocols import PROTOCOLS, benchmark_numbers
    from .imaging.segmentation import subregions
    from .material import bmd_material_of
    from .mesh.kinds import MESHES
    from .mesh.materials import element_materials, map_bmd
    from .mesh.quality import quality_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    T = _Timer(progress)
    with T("read"):
        hu = load_image(scan, opts)
    with T("calibrate"):
        calib, bmd = calibrate(hu, opts)
    mode, base = link or ("off", None)
    with T("segment"):
        mask, labels = segment(bmd, opts, hu)
        if base is None:
            regions = subregions(mask)
    reg = None
    if base is not None:  # a follow-up: into the baseline's frame, with its regions and screws
        from .longitudinal import follow_up

        with T("register"):
            fu = follow_up(base, bmd, mask, labels, mode,
                           level=(opts.label_values or opts.level) if opts.labels else None)
            bmd, mask, labels, regions, reg = fu.bmd, fu.mask, fu.labels, fu.regions, fu.registration
    with T("segment"):
        frame = regions.meta["frame"]
        cap_masks = end_caps(mask, labels, regions, frame, opts)
    with T("plan"):
        screws = plan(mask, regions, opts) if base is None else base.screws
    with T("bmd"):
        measures = bmd_measures(bmd, mask, regions, frame, screws, opts)
        if reg is not None:  # regional measures over the baseline's voxels; the screw ROI is grid-free
            measures.update({k: v for k, v in bmd_measures(*fu.measure_volumes(), frame, [], opts).items()
                             if "screw" not in k})
    check_model_size(mask, screws, opts)
    with T("mesh"):
        if mode == "mesh" and base is not None:
            mesh = base.mesh  # same mesh, new densities
        else:
            mesh = MESHES[opts.mesh].build(mask, screws, cap_masks, size_mm=opts.mesh_size_mm,
                                           screw_size_mm=opts.screw_mesh_size_mm, order=opts.element_order,
                                           voxel_mm=opts.voxel_size_mm)
        quality = quality_report(mesh)
    if mode != "off" and base is None:
        from .longitudinal import save_baseline

        with T("write"):
            save_baseline(out, bmd, mask, regions, screws, mesh if mode == "mesh" else None,
                          out.name, asdict(opts))
    with T("materials"):
        if mesh.is_hex:
            from .mesh.voxel import voxel_bmd

            elem_bmd = voxel_bmd(mesh, bmd, mask)
        else:
            elem_bmd = map_bmd(mesh, bmd, mask)
        mat = element_materials(mesh, elem_bmd, law=opts.law, nu_bone=opts.nu_bone,
                                ash_method=opts.ash_conversion, bmd_material=bmd_material_of(bmd),
                                screws=screws)
    bframe = BodyFrame.from_regions(regions if base is None else base.regions)
    cases = load_cases(mesh, bframe, screws)
    from .fem.assembly import Assembler

    assembler = Assembler(mesh.points, mesh.cells)  # pattern and element matrices shared by all cases
    analyses = {}
    protocol = PROTOCOLS[opts.protocol]
    if progress is not None:
        progress.cases([c.name for c in cases])
    # Each case's files (VTU, curves, pictures; mostly zlib and numpy, which release the GIL)
    # are written by one background thread while the next case is solved, on the core the
    # single-threaded solver leaves idle. "write" times the main thread's wait only.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fesim-write") as writer:
        pending = []
        for case in cases:
            with T(case.name):
                steps = opts.max_steps if opts.strength == "nonlinear" else 0  # surrogate: one linear solve
                res = _analyse(mesh, mat, case, bframe, protocol, opts, steps, assembler, progress)
            analyses[case.name] = res
            # the finished case's solver is a reference cycle (its preconditioner calls back
            # into it): ~0.6 GB that would otherwise stay beside the next case's set-up
            gc.collect()
            for done in [f for f in pending if f.done()]:
                done.result()  # a failed write stops the run now, not after the last case
            pending.append(writer.submit(write_case_outputs, out, mesh, mat, elem_bmd, res,
                                         vtk=opts.write_vtk, case=case, frame=bframe))
        with T("write"):
            export_models(out, mesh, mat, cases, opts.export)
            for f in pending:
                f.result()

    def strength(r):
        return r.strength_N if opts.strength == "nonlinear" else r.surrogate_strength_N

    comp = analyses["compression"]
    case_audit = {c.name: c.audit for c in cases}
    pulls = [analyses[c.name] for c in cases if c.screw is not None]
    result = ScanResult(
        scan_id=hu.meta.get("pseudonym") or hu.meta.get("series_key"),
        pullout_strength_N=float(np.mean([strength(r) for r in pulls])) if pulls else float("nan"),
        pullout_stiffness_N_per_mm=float(np.mean([r.stiffness_N_per_mm for r in pulls])) if pulls else float("nan"),
        compression_strength_N=strength(comp),
        compression_stiffness_N_per_mm=comp.stiffness_N_per_mm,
        **measures,
        n_nodes=mesh.n_nodes,
        n_elements=mesh.n_elements,
        n_dofs=3 * mesh.n_nodes,
        element_order=mesh.order,
        mesh_type=mesh.cell_type,
        voxel_size_mm=mesh.info.get("voxel_size_mm"),
        strength_criterion=comp.criterion if opts.strength == "nonlinear" else
        "linear surrogate: load at which 2 % of bone volume exceeds its yield strain",
        fesim_version=__version__,
        timings_s=T.t,
        calibration=calib.to_dict(),
        screws=[s.to_dict() for s in screws],
        mesh_quality=quality,
        material_law=opts.law,
        ash_conversion=opts.ash_conversion,
        analyses={name: AnalysisResult.from_strength(r, case_audit[name]) for name, r in analyses.items()},
        options=asdict(opts),
        protocol=opts.protocol,
        provenance=provenance(scan, asdict(opts), opts.labels),
    )
    from .longitudinal import summary

    for name, value in summary(mode, "off" if mode == "off" else "follow-up" if base else "baseline",
                               base, reg).items():
        setattr(result, name, value)
    if opts.keep_identifiers:  # explicit opt-in only: results otherwise carry pseudonyms
        from .imaging.dicom import read_identifiers

        result.identifiers = read_identifiers(scan, opts.series_uid) if Path(scan).is_dir() else {}
    if protocol.failure_displacement_mm is not None:
        result.with_benchmark(benchmark_numbers(comp, protocol))
    return result


def _analyse(mesh, mat, case, bframe, protocol, opts: RunOptions, steps: int, assembler, progress=None):
    """One load case through the strength analysis, as the protocol sets it.

    With ``protocol.axial_only`` the compression case is solved on the mesh in body
    coordinates (so "along the axis only" is one displacement component) and its
    displacements are turned back into the image's frame for the outputs.
    """
    from .analysis.protocols import axial_compression_case, body_frame_rotation, can_fail, to_body_frame
    from .analysis.strength import ACCURACY, FailureModel, run_strength

    settings = ACCURACY[opts.strength_accuracy].settings.replace(
        solver=opts.solver, max_steps=steps, snapshot_every=3 if opts.write_vtk else 0)
    kwargs = dict(settings=settings)
    if progress is not None:  # the peak lies near 1 / step_fraction steps; a few more to pass it
        expected = int(np.ceil(1.4 / settings.step_fraction))
        kwargs["progress"] = progress.step_callback(case.name, expected)
    if protocol.material_yield:
        fails = can_fail(mesh)
        # sigma_y / E; bone of zero or negative density (E at its floor, no strength) gets 0.1 %
        eps = np.where(fails, np.maximum(mat.yield_stress / np.maximum(mat.E, 1e-12), 1e-3), 1.0)
        kwargs.update(fm=FailureModel(eps_yield_compression=eps, eps_yield_tension=eps), can_fail=fails)
    if not (protocol.axial_only and case.name == "compression"):
        return run_strength(mesh, mat.E, mat.nu, case, assembler=assembler, **kwargs)
    body_mesh = to_body_frame(mesh, bframe)
    axial = axial_compression_case(body_mesh, case)
    case.audit["protocol"] = axial.audit["protocol"]  # recorded with the case's sets in result.json
    res = run_strength(body_mesh, mat.E, mat.nu, axial, **kwargs)
    R = body_frame_rotation(bframe)
    res.u_peak = res.u_peak @ R
    res.snapshots = [(d, u @ R, f) for d, u, f in res.snapshots]
    return res
