"""Compare the in-house lattice mesher with TetGen, gmsh and fTetWild on the same bone.

Run from the project root: ``python benchmarks/compare_meshers.py [--meshers tetgen,gmsh]``.

The external meshers are copyleft (gmsh GPL, TetGen AGPL) or pull in VTK, so they live in a
separate throwaway environment, never in fesim's: this script runs itself there as a worker
(``--python``, default env ``FESIM_CMP_PYTHON`` or ``/tmp/cmpvenv/bin/python``). Each mesher
that is not installed there is skipped and reported as such. All meshers get the same closed
surface: marching cubes (scikit-image) of fesim's smoothed, volume-corrected bone level set,
sampled every ``size`` mm; the in-house mesher meshes the level set itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_PYTHON = "/tmp/cmpvenv/bin/python"


# ------------------------------------------------------------------------------------------
# Worker side (runs in the throwaway environment; numpy + the meshers only)
# ------------------------------------------------------------------------------------------

def _surface(phi, spacing, origin, direction, size):
    from skimage.measure import marching_cubes

    step = max(1, int(round(size / float(np.max(spacing)))))
    v, f, _, _ = marching_cubes(phi, 0.0, spacing=tuple(spacing), step_size=step,
                                allow_degenerate=False)
    return origin + v @ direction.T, f.astype(np.int64)


def _tetgen(v, f, size):
    import tetgen

    out = tetgen.TetGen(v, f).tetrahedralize(order=1, mindihedral=10.0, minratio=1.5,
                                             maxvolume=size**3 / 6.0 * 1.5, quality=True)
    return out[0], out[1]


def _gmsh(v, f, size, remesh: bool = False):
    import gmsh

    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.option.setNumber("General.NumThreads", 1)
        s = gmsh.model.addDiscreteEntity(2)
        gmsh.model.mesh.addNodes(2, s, np.arange(1, len(v) + 1), v.ravel())
        gmsh.model.mesh.addElementsByType(s, 2, [], (f + 1).ravel())
        if remesh:  # re-mesh the surface at ``size`` instead of keeping marching-cube triangles
            gmsh.model.mesh.classifySurfaces(np.pi, True, True, np.pi)
            gmsh.model.mesh.createGeometry()
            s = [e[1] for e in gmsh.model.getEntities(2)]
        else:
            s = [s]
        loop = gmsh.model.geo.addSurfaceLoop(s)
        gmsh.model.geo.addVolume([loop])
        gmsh.model.geo.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMax", size)
        gmsh.option.setNumber("Mesh.Algorithm3D", 1)  # Delaunay
        gmsh.option.setNumber("Mesh.Optimize", 1)
        gmsh.model.mesh.generate(3)
        tags, xyz, _ = gmsh.model.mesh.getNodes()
        _, etags, enodes = gmsh.model.mesh.getElements(3)
        pos = np.zeros(int(tags.max()) + 1, np.int64)
        pos[tags.astype(np.int64)] = np.arange(len(tags))
        cells = pos[np.asarray(enodes[0], np.int64)].reshape(-1, 4)
        return xyz.reshape(-1, 3), cells
    finally:
        gmsh.finalize()


def _pytetwild(v, f, size):
    import pytetwild

    diag = float(np.linalg.norm(v.max(0) - v.min(0)))
    return pytetwild.tetrahedralize(v, f, edge_length_fac=size / diag)


WORKERS = {"tetgen": (_tetgen, "AGPL-3.0 (pip tetgen, pyvista wrapper)"),
           "gmsh": (_gmsh, "GPL-2.0+ (pip gmsh)"),
           "gmsh-remesh": (lambda v, f, size: _gmsh(v, f, size, remesh=True), "GPL-2.0+ (pip gmsh)"),
           "pytetwild": (_pytetwild, "MPL-2.0 (pip pytetwild, fTetWild)")}


def worker(npz: str, out_dir: str, meshers: list[str]) -> None:
    d = np.load(npz)
    size = float(d["size"])
    report = {}
    for name in meshers:
        try:
            __import__(name.split("-")[0])
        except ImportError:
            report[name] = {"status": "not installed", "licence": WORKERS[name][1]}
    todo = [m for m in meshers if m not in report]
    try:
        v, f = _surface(d["phi"], d["spacing"], d["origin"], d["direction"], size) if todo else (None, None)
    except ImportError:
        report.update({m: {"status": "scikit-image not installed", "licence": WORKERS[m][1]} for m in todo})
        todo = []
    for name in todo:
        fn, lic = WORKERS[name]
        t = time.perf_counter()
        try:
            pts, cells = fn(v, f, size)
        except Exception as exc:  # a mesher failing is a result, not a crash
            report[name] = {"status": f"failed: {exc}", "licence": lic}
            continue
        report[name] = {"status": "ok", "licence": lic, "time_s": time.perf_counter() - t}
        np.savez(Path(out_dir) / f"{name}.npz", points=np.asarray(pts, float),
                 cells=np.asarray(cells, np.int64))
    (Path(out_dir) / "report.json").write_text(json.dumps(report))


# ------------------------------------------------------------------------------------------
# Driver side (fesim's environment)
# ------------------------------------------------------------------------------------------

def _quality(points, cells) -> dict:
    from fesim.mesh.quality import dihedral_angles, radius_ratio
    from fesim.mesh.refine import cell_volumes, positive_cells

    cells = positive_cells(points, cells)
    vol = cell_volumes(points, cells)
    rr = radius_ratio(points, cells)
    dih = dihedral_angles(points, cells)
    return {"elements": len(cells), "nodes": len(np.unique(cells)), "volume_mm3": float(vol.sum()),
            "rr_min": float(rr.min()), "rr_p1": float(np.percentile(rr, 1)),
            "rr_p50": float(np.median(rr)), "min_dihedral_deg": float(dih.min())}


def _cases():
    from fesim.synthetic.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(rods_mg_cm3=None))
    yield "phantom L4 (0.8x0.8x1 mm)", ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    root = Path(os.environ.get("FESIM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    labels = root / "totalsegmentator" / "example_ct_labels.nii.gz"
    if labels.is_file():
        from fesim.imaging.nifti import read_nifti
        from fesim.imaging.segmentation import mask_from_labels

        yield "real L4 (3 mm voxels)", mask_from_labels(read_nifti(labels, kind="labels"), [28])
    else:
        print(f"real CT not found at {labels}: skipped")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=os.environ.get("FESIM_CMP_PYTHON", DEFAULT_PYTHON))
    ap.add_argument("--meshers", default="tetgen,gmsh,gmsh-remesh", help="comma list of " + ",".join(WORKERS))
    ap.add_argument("--size", type=float, default=2.0, help="target edge length, mm")
    ap.add_argument("--worker", nargs=2, metavar=("NPZ", "OUT_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    meshers = [m for m in args.meshers.split(",") if m]
    if args.worker:
        worker(args.worker[0], args.worker[1], meshers)
        return []
    from fesim.mesh.levelset import bone_level_set
    from fesim.mesh.mesher import mesh_vertebra

    have_python = Path(args.python).is_file()
    if not have_python:
        print(f"no comparison environment at {args.python}: external meshers skipped "
              "(create a venv there with `pip install gmsh tetgen scikit-image`)")
    rows = []
    print("| case | mesher | licence | time s | elements | radius ratio min / p1 / p50 "
          "| min dihedral | volume vs mask |")
    print("|---|---|---|---|---|---|---|---|")
    for case, mask in _cases():
        mask_vol = float((mask.data > 0).sum() * mask.voxel_volume_mm3)
        t = time.perf_counter()
        m = mesh_vertebra(mask, [], size_mm=args.size)
        res = {"case": case, "mesher": "fesim lattice", "licence": "BSD-3",
               "time_s": time.perf_counter() - t, **_quality(m.points, m.cells)}
        rows.append(res)
        with tempfile.TemporaryDirectory() as tmp:
            if have_python:
                ls = bone_level_set(mask, None, pad_mm=4.0)
                np.savez(Path(tmp) / "in.npz", phi=ls.grid.data, spacing=ls.grid.spacing,
                         origin=ls.grid.origin, direction=ls.grid.direction, size=args.size)
                proc = subprocess.run([args.python, __file__, "--worker", str(Path(tmp) / "in.npz"), tmp,
                                       "--meshers", ",".join(meshers)], capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"worker failed: {proc.stderr.strip().splitlines()[-1:]}")
                rep = json.loads((Path(tmp) / "report.json").read_text()) if proc.returncode == 0 else {}
                for name in meshers:
                    r = rep.get(name, {"status": "worker failed", "licence": WORKERS[name][1]})
                    row = {"case": case, "mesher": name, **r}
                    if r.get("status") == "ok":
                        d = np.load(Path(tmp) / f"{name}.npz")
                        row.update(_quality(d["points"], d["cells"]))
                    else:
                        print(f"{name}: {r['status']} (skipped)")
                    rows.append(row)
        for r in rows:
            if r["case"] != case or "elements" not in r:
                continue
            print(f"| {case} | {r['mesher']} | {r['licence']} | {r['time_s']:.1f} | {r['elements']} "
                  f"| {r['rr_min']:.3f} / {r['rr_p1']:.3f} / {r['rr_p50']:.3f} | {r['min_dihedral_deg']:.1f} "
                  f"| {100 * (r['volume_mm3'] / mask_vol - 1):+.1f} % |")
    return rows


if __name__ == "__main__":
    main()
