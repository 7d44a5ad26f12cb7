"""``fesim`` command line: phantom, segment, inspect, run, study (alias cohort), demo.

A user error (bad file, bad option, unsolvable model) prints one line on stderr and exits
with code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .errors import FesimError
from .analysis.loadcases import LOAD_CASES
from .analysis.protocols import PROTOCOLS
from .analysis.strength import ACCURACY
from .fem.solvers import AUTO_DIRECT_MAX_DOFS, SOLVERS
from .imaging.caps import CAP_SHAPES
from .imaging.labels import LABEL_CONVENTIONS, canonical_convention
from .imaging.screwplan import TIP_SHAPES
from .io.formats import FORMATS
from .material import ASH_EQUATIONS, BMD_MATERIALS, LAWS
from .mesh.kinds import MESHES


def _floats(text, n=None):
    try:
        vals = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    if n is not None and len(vals) != n:
        raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
    return vals


def _vec3(text):
    vals = _floats(text, 3)
    if not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected three finite numbers, got {text!r}")
    return vals


def _formats(text):
    names = tuple(x for x in str(text).split(",") if x)
    unknown = [x for x in names if x not in FORMATS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown export format(s) {', '.join(unknown)}; "
                                         f"choose from {', '.join(FORMATS.names())}")
    return names


def _convention(text):
    """``--convention`` value: aliases (``total``, ``v1``) become the registered name."""
    return canonical_convention(text)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of the per-scan analysis (shared by run, cohort and demo)."""
    g = p.add_argument_group("image and labels")
    g.add_argument("--labels", help="label map (NIfTI) on the CT grid, e.g. from TotalSegmentator or VerSe")
    g.add_argument("--level", default="L4", help="vertebra to analyse in the label map (default L4)")
    g.add_argument("--seed-point", type=_vec3,
                   help="without labels: a point x,y,z inside the vertebral body (patient LPS mm, as DICOM and "
                        "fesim's outputs; NIfTI RAS x,y are negated) -- that vertebra is analysed, no level counting")
    g.add_argument("--label-values", help="comma-separated label values taken as one vertebra (overrides --level)")
    g.add_argument("--convention", default="auto", type=_convention,
                   choices=("auto",) + LABEL_CONVENTIONS.names(),
                   help="label numbering of the map: auto (default: the names stored in the map, else "
                        "detected from the values present and their order along the spine; an ambiguous "
                        "map is refused naming the candidates), or " + LABEL_CONVENTIONS.help())
    g.add_argument("--series-uid", help="DICOM series to use when the folder holds several (see fesim inspect)")
    g = p.add_argument_group("calibration")
    g.add_argument("--calibration", default="auto", choices=["auto", "phantom", "internal", "none"],
                   help="HU->BMD: rods in the image, phantomless from tissues, none (image already in mg/cm^3), "
                        "or auto = phantom, else internal (default auto)")
    g.add_argument("--rod-densities", type=_floats, default=(0.0, 50.0, 100.0, 200.0),
                   help="known rod densities in mg/cm^3 (default 0,50,100,200)")
    g.add_argument("--rod-material", default="K2HPO4", choices=BMD_MATERIALS,
                   help="mineral of the rods and so of the BMD: the ash conversion must be defined for it "
                        "(default K2HPO4)")
    g = p.add_argument_group("screws")
    g.add_argument("--screws", default="both", choices=["none", "left", "right", "both"])
    g.add_argument("--trajectory", default="traditional", choices=["traditional", "cortical"])
    g.add_argument("--screw-length", dest="screw_length_mm", type=float, help="mm (default 40, CBT 35)")
    g.add_argument("--screw-diameter", dest="screw_diameter_mm", type=float, help="mm (default 6.5, CBT 5.5)")
    g.add_argument("--screw-tip", dest="screw_tip", default="round", choices=TIP_SHAPES,
                   help="screw tip: round (hemispherical, default) or flat (plain cylinder)")
    g.add_argument("--screw-entry", type=_vec3, help="user screw entry point x,y,z (LPS mm)")
    g.add_argument("--screw-direction", type=_vec3, help="user screw direction x,y,z (LPS, head to tip)")
    g.add_argument("--screw-roi-radius", dest="screw_roi_radius_mm", type=float,
                   help="radius of the BMD cylinder around the screw path, mm")
    g = p.add_argument_group("end caps (compression)")
    g.add_argument("--caps", default="none", choices=["none", "pmma"],
                   help="PMMA layers generated on both endplates, as in embedded cadaver tests (default none)")
    g.add_argument("--cap-thickness", dest="cap_thickness_mm", type=float, default=5.0, help="mm (default 5)")
    g.add_argument("--cap-labels", help="label values of the label map used as caps, e.g. the discs")
    g.add_argument("--cap-shape", dest="cap_shape", default="flat", choices=CAP_SHAPES,
                   help="generated caps: flat (filled up to a plane, default) or extruded (the endplate "
                        "surface moved along the body axis, the benchmark's 'jelly bean' disks)")
    g = p.add_argument_group("mesh and model", "load cases analysed: " + LOAD_CASES.help())
    g.add_argument("--mesh", default=MESHES.names()[0], choices=MESHES.names(), help=MESHES.help())
    g.add_argument("--voxel-size", dest="voxel_size_mm", type=float, default=None,
                   help="voxel mesh edge, mm (default: the image spacing if the image is isotropic and "
                        "no coarser than 1 mm, else the image is resampled to 1 mm isotropic voxels)")
    g.add_argument("--mesh-size", dest="mesh_size_mm", type=float, default=2.0, help="bulk element size, mm (default 2)")
    g.add_argument("--screw-mesh-size", dest="screw_mesh_size_mm", type=float, default=1.0,
                   help="element size at the screw interface, mm (default 1)")
    g.add_argument("--order", dest="element_order", type=int, default=2, choices=[1, 2],
                   help="2 = tet10 (default; mesh-converged pullout), 1 = tet4 (faster, stiffer: screening only)")
    g.add_argument("--law", default="keyak", choices=LAWS.names(),
                   help="density-modulus law: " + ", ".join(lw.describe() for lw in LAWS.values())
                        + " (default keyak)")
    g.add_argument("--ash-conversion", default="identity", choices=ASH_EQUATIONS.names(),
                   help="QCT density -> ash density for the laws that take ash density, each for the "
                        "calibration material(s) it is defined for: "
                        + "; ".join(eq.describe() for eq in ASH_EQUATIONS.values())
                        + " (default identity, as MECHANICAL FINDER studies do)")
    g.add_argument("--strength", default="nonlinear", choices=["nonlinear", "surrogate"])
    g.add_argument("--strength-accuracy", default=ACCURACY.names()[0], choices=ACCURACY.names(),
                   help="secant iterations of the nonlinear analyses: " + ACCURACY.help())
    g.add_argument("--protocol", default=PROTOCOLS.names()[0], choices=PROTOCOLS.names(),
                   help=PROTOCOLS.help() + ". A protocol sets the options it names (see docs/methods.md)")
    g.add_argument("--solver", default="auto", choices=("auto",) + SOLVERS.names(),
                   help=f"auto (default): a direct solver up to {AUTO_DIRECT_MAX_DOFS} unknowns, else pmg; "
                        + SOLVERS.help())
    g.add_argument("--no-vtk", dest="write_vtk", action="store_false", help="skip VTU output")
    g.add_argument("--keep-identifiers", dest="keep_identifiers", action="store_true",
                   help="copy the DICOM patient and study identifiers into result.json (off by default: "
                        "outputs carry pseudonyms only)")
    g.add_argument("--export", type=_formats, default=(),
                   help="also write the model for other solvers, comma-separated: " + FORMATS.help())


def _run_options(args) -> dict:
    """The parsed flags that are :class:`~fesim.pipeline.RunOptions` fields (one name each)."""
    from dataclasses import fields

    from .pipeline import RunOptions

    return {f.name: getattr(args, f.name) for f in fields(RunOptions) if hasattr(args, f.name)}


def cmd_phantom(args):
    from .synthetic.phantom import PhantomSpec, make_phantom, write_phantom

    if args.spine:
        from .synthetic.spine import SpineSpec, make_spine, write_spine

        path = write_spine(make_spine(SpineSpec(seed=args.seed, density_scale=args.density_scale)), args.out)
        print(f"synthetic spine CT (T12-sacrum) written to {path}: ct.nii.gz, labels.nii.gz "
              "(TotalSegmentator v2 numbering), discs.nii.gz, truth.json")
        return
    spec = PhantomSpec(seed=args.seed, density_scale=args.density_scale,
                       rods_mg_cm3=None if args.no_rods else (0.0, 50.0, 100.0, 200.0),
                       neighbours=args.neighbours)
    path = write_phantom(make_phantom(spec), args.out, compressed=args.compressed)
    print(f"synthetic QCT series written to {path}")


def cmd_segment(args):
    import numpy as np

    from .imaging.labels import SPINE_ORDER, detect_convention
    from .imaging.nifti import write_nifti
    from .imaging.totalseg import SPINE_ROIS, segment_ct, totalsegmentator_api
    from .pipeline import RunOptions, load_image

    totalsegmentator_api()  # refuse at once when it is not installed
    ct = load_image(args.ct, RunOptions(series_uid=args.series_uid))
    labels = segment_ct(ct, fast=args.fast, device=args.device,
                        roi_subset=None if args.all_classes else SPINE_ROIS)
    out = write_nifti(labels, args.out)
    det = detect_convention(labels)
    present = {int(v) for v in np.unique(labels.data)}
    levels = sorted({det.table[v] for v in present if v in det.table}, key=SPINE_ORDER.index)
    print(f"label map written to {out}: vertebrae {', '.join(levels)} ({det.reason}); "
          f"use it with: fesim run {args.ct} --labels {out}")


def cmd_inspect(args):
    from .imaging.dicom import list_series

    infos = list_series(args.path)
    for s in infos:
        print(s.describe() if hasattr(s, "describe") else s)


def _given_run_options(args) -> dict:
    """The run options set explicitly on the command line (not argparse defaults)."""
    return {k: v for k, v in _run_options(args).items() if k in getattr(args, "given", ())}


def cmd_run(args):
    from .pipeline import run_scan
    from .progress import RunProgress
    from .results import UNSET, ScanResult

    bar = RunProgress("run")
    try:
        baseline = getattr(args, "baseline", None)
        mode = getattr(args, "longitudinal", None) or ("mesh" if baseline else "off")
        res = run_scan(args.scan, args.out, progress=bar, longitudinal=mode, baseline=baseline,
                       **_run_options(args))
    finally:
        bar.close()
    res = ScanResult.from_dict(res)
    parts = []
    if res.has_screws:
        parts.append(f"pullout strength {res.pullout_strength_N:.0f} N")
    parts.append(f"compression strength {res.compression_strength_N:.0f} N")
    if res.benchmark_failure_load_N is not UNSET:
        parts.append(f"benchmark failure load {res.benchmark_failure_load_N:.0f} N, stiffness "
                     f"{res.benchmark_stiffness_N_per_mm:.0f} N/mm")
    print(f"{', '.join(parts)}; results in {Path(args.out) / 'result.json'}")


def cmd_study(args):
    from .study.cohort import load_failures
    from .study.manifest import load_study
    from .study.runner import run_study

    if args.workers is not None and args.workers < 1:
        from .errors import OptionError

        raise OptionError(f"--workers must be at least 1, got {args.workers}")
    t0 = time.perf_counter()
    study = load_study(args.manifest, args.options, baseline_month=args.baseline_month,
                       allow_outside=args.allow_outside_paths)
    rows = run_study(study, args.out, run_options=_given_run_options(args), backend=args.backend,
                     n_workers=args.workers, scheduler_address=args.scheduler,
                     report=not args.no_report, longitudinal=args.longitudinal)
    fails = load_failures(args.out)
    print(f"{len(rows)}/{len(study.scans)} scan(s) analysed in {time.perf_counter() - t0:.0f} s"
          + (f", {len(fails)} failed (see {Path(args.out) / 'failures.json'})" if fails else "")
          + (f"; report: {Path(args.out) / 'report.html'}" if rows and not args.no_report else ""))


def cmd_demo(args):
    from .study.demo import run_demo

    res = run_demo(args.out, n_patients=args.patients, backend=args.backend, n_workers=args.workers,
                   options=_given_run_options(args))
    print(f"[demo] {len(res['rows'])}/{res['n_scans']} scans: inputs written in {res['inputs_s']:.0f} s, "
          f"total {res['total_s']:.0f} s ({res['total_s'] / 60:.1f} min); report: "
          f"{Path(args.out) / 'report.html'}")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The ``fesim`` parser; ``suppress_defaults`` leaves unset options out of the namespace."""
    p = argparse.ArgumentParser(prog="fesim", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"fesim {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("phantom", help="write a synthetic L4 QCT DICOM series with calibration rods")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--density-scale", type=float, default=1.0, help="multiplies bone density (follow-up scans)")
    q.add_argument("--no-rods", action="store_true", help="omit the calibration phantom")
    q.add_argument("--neighbours", action="store_true", help="add L3, L5 and discs")
    q.add_argument("--compressed", choices=["rle", "jpeg2000"], help="compressed pixel data")
    q.add_argument("--spine", action="store_true",
                   help="a lumbar spine instead: T12 with ribs, L1-L5, sacrum, iliac wings, discs, as NIfTI "
                        "with a TotalSegmentator-numbered label map")
    q.set_defaults(func=cmd_phantom)

    q = sub.add_parser("segment", help="label map of a CT by TotalSegmentator (optional extra: "
                                       "pip install 'fesim[totalseg]'), for --labels",
                       description="Run TotalSegmentator (Apache-2.0; an optional extra, its model weights "
                                   "are downloaded by it on this machine under their own licence terms) "
                                   "on a CT and write a label map on the CT's grid for fesim run --labels. "
                                   "Without it, fesim's classical route applies.")
    q.add_argument("ct", help="DICOM folder or NIfTI CT file")
    q.add_argument("--out", required=True, help="label map to write (.nii.gz)")
    q.add_argument("--fast", action="store_true", help="TotalSegmentator's faster 3 mm model")
    q.add_argument("--device", default="gpu", choices=["gpu", "cpu", "mps"],
                   help="gpu (default; TotalSegmentator falls back to the CPU without one), cpu or mps")
    q.add_argument("--all-classes", action="store_true", help="segment every class, not only the spine")
    q.add_argument("--series-uid", help="DICOM series to use when the folder holds several")
    q.set_defaults(func=cmd_segment)

    q = sub.add_parser("inspect", help="list the DICOM series in a folder")
    q.add_argument("path")
    q.set_defaults(func=cmd_inspect)

    q = sub.add_parser("run", help="analyse one scan: pullout and compression strength")
    q.add_argument("scan", help="DICOM folder or NIfTI CT file")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--longitudinal", choices=["off", "plan", "mesh"],
                   help="longitudinal consistency (default off, mesh with --baseline): without "
                        "--baseline, keep this scan's baseline.npz for its follow-ups; with it, "
                        "analyse this scan as a follow-up")
    q.add_argument("--baseline", help="output folder of the baseline's run: register this scan to it "
                                      "and use its screws and regions (and its mesh in mode mesh)")
    add_run_options(q)
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("study", aliases=["cohort"],
                       help="run a study from a CSV manifest (one row per scan) and report it",
                       description="Run a study: validate the manifest, analyse every scan "
                                   "(resuming finished ones), write results.csv, stats.csv and "
                                   "report.html. Manifest columns: patient, month or visit_date, "
                                   "path, optional labels, level, dxa_abmd_g_cm2, dxa_tscore, arm, "
                                   "repeat (see docs/study.md). Run options: the options file's "
                                   "[run] section, overridden by flags given here.")
    q.add_argument("manifest")
    q.add_argument("--out", required=True)
    q.add_argument("--options", help="TOML file of study options ([study] and [run] sections)")
    q.add_argument("--backend", choices=["local", "processes", "dask"],
                   help="local (serial), processes, or dask (default; a local cluster unless "
                        "--scheduler is given)")
    q.add_argument("--workers", type=int, help="parallel workers (default: number of CPUs)")
    q.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    q.add_argument("--baseline-month", type=int, help="baseline visit (default 0)")
    q.add_argument("--longitudinal", choices=["off", "plan", "mesh"],
                   help="follow-ups registered to the patient's baseline and analysed on its mesh "
                        "with its screws and regions (mesh, the default), with its screws and regions "
                        "on their own mesh (plan; the default for voxel meshes), or each scan on its "
                        "own (off); see docs/study.md")
    q.add_argument("--no-report", action="store_true", help="results tables only")
    q.add_argument("--allow-outside-paths", action="store_true",
                   help="accept scan paths outside the manifest's folder")
    add_run_options(q)
    q.set_defaults(func=cmd_study)

    q = sub.add_parser("demo", help="synthetic Tani-sized denosumab study (21 x 3 scans), whole chain, report")
    q.add_argument("--out", default="demo_out")
    q.add_argument("--patients", type=int, default=21)
    q.add_argument("--backend", default="dask", choices=["local", "processes", "dask"])
    q.add_argument("--workers", type=int, default=2)
    add_run_options(q)  # flags given here override the demo's screening settings
    q.add_argument("--vtk", dest="write_vtk", action="store_true",
                   help="write VTU files and the per-patient ParaView series (off in the demo)")
    q.set_defaults(func=cmd_demo)
    if suppress_defaults:
        for parser in sub.choices.values():
            parser._defaults.clear()
            for a in parser._actions:
                if a.dest != "help":
                    a.default = argparse.SUPPRESS
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"fesim: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fesim: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("fesim").addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            if not args.debug:
                warnings.showwarning = _one_line_warning
            args.func(args)
    except FesimError as exc:
        if args.debug:
            raise
        print(f"fesim: error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        if args.debug:
            raise
        print("fesim: error: out of memory; use a coarser --mesh-size or fewer --workers", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fesim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user error: one line, and how to see more
        if args.debug:
            raise
        print(f"fesim: internal error: {type(exc).__name__}: {exc} (rerun with --debug)", file=sys.stderr)
        return 1
    finally:
        logging.getLogger("fesim").removeHandler(handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
