"""Meshing benchmark: phantom L4 with two planned screws, per-stage times and quality.

Run from the project root: ``python benchmarks/mesh.py [--fine]``. Prints one Markdown table
row per setting (default pipeline sizes 2 mm / 1 mm, and a finer 1.5 mm / 0.7 mm), the
mineral-mass balance of the BMD mapping and the machine load (the cores are shared).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fesim.synthetic.phantom import PhantomSpec, make_phantom
from fesim.imaging.planning import plan_screws
from fesim.imaging.segmentation import subregions
from fesim.mesh.materials import element_materials, map_bmd
from fesim.mesh.mesher import mesh_vertebra
from fesim.mesh.quality import quality_report

SETTINGS = {"default": (2.0, 1.0), "fine": (1.5, 0.7)}


def interface_on_cylinder(mesh, screws) -> float:
    """Share of bone-screw faces whose three nodes lie on the screw surface (1e-6 mm)."""
    faces = np.sort(mesh.cells[:, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]], axis=2).reshape(-1, 3)
    reg = np.repeat(mesh.region, 4)
    u, inv = np.unique(faces, axis=0, return_inverse=True)
    inv = inv.ravel()
    total = on = 0
    for s, sp in enumerate(screws):
        a = np.zeros(len(u), bool)
        b = np.zeros(len(u), bool)
        a[inv[reg == 1]] = True
        b[inv[reg == 10 + s]] = True
        f = u[a & b]
        d = np.abs(sp.signed_distance(mesh.points[f])).max(axis=1)
        total += len(f)
        on += int((d < 1e-6).sum())
    return on / max(total, 1)


def run(name: str, size: float, screw_size: float, ph, mask, screws) -> dict:
    t = time.perf_counter()
    mesh = mesh_vertebra(mask, screws, size_mm=size, screw_size_mm=screw_size)
    t_mesh = time.perf_counter() - t
    t = time.perf_counter()
    q = quality_report(mesh)
    t_q = time.perf_counter() - t
    info = {}
    t = time.perf_counter()
    bmd_e = map_bmd(mesh, ph.bmd, mask, info=info)
    t_map = time.perf_counter() - t
    t = time.perf_counter()
    element_materials(mesh, bmd_e)
    t_mat = time.perf_counter() - t
    vol = mesh.corner_volumes()
    bone_mass = (bmd_e * vol)[mesh.is_bone()].sum() * 1e-3
    # Screws displace bone: compare bone + displaced mineral with the voxel mineral.
    balance = (bone_mass + info["mass_unselected_elements_mg"]) / info["mass_voxels_mg"] - 1
    i = mesh.info
    return dict(name=name, size=f"{size:g}/{screw_size:g}", levelset=i["time_level_set_s"],
                lattice=i["time_lattice_s"], snap=i["time_snap_s"], label=i["time_label_s"],
                mesh=t_mesh, quality=t_q, bmd=t_map, materials=t_mat,
                total=t_mesh + t_q + t_map + t_mat, elements=mesh.n_elements, nodes=mesh.n_nodes,
                rr_min=q["radius_ratio_min"], rr_p1=q["radius_ratio_p1"],
                dihedral=q["min_dihedral_deg"], on_cyl=interface_on_cylinder(mesh, screws),
                screw_vol=np.mean([vol[mesh.is_screw(s)].sum() / sp.volume_mm3 - 1
                                   for s, sp in enumerate(screws)]),
                mass=balance)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SETTINGS), help="run one setting")
    args = ap.parse_args(argv)
    load0 = os.getloadavg()
    ph = make_phantom(PhantomSpec(rods_mg_cm3=None))
    mask = ph.labels.with_data((ph.labels.data == 1).astype(np.uint8))
    screws = plan_screws(mask, regions=subregions(mask))
    rows = [run(n, *SETTINGS[n], ph, mask, screws) for n in SETTINGS if args.only in (None, n)]
    print(f"load average before/after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("| setting | mm bulk/screw | level set | lattice+refine | snap+label check | cleanup "
          "| quality | BMD map | materials | total s | elements | nodes | radius ratio min / p1 "
          "| min dihedral | faces on cylinder | screw vol | mineral balance |")
    print("|" + "---|" * 17)
    for r in rows:
        print(f"| {r['name']} | {r['size']} | {r['levelset']:.2f} | {r['lattice']:.2f} | {r['snap']:.2f} "
              f"| {r['label']:.2f} | {r['quality']:.2f} | {r['bmd']:.2f} | {r['materials']:.3f} "
              f"| {r['total']:.1f} | {r['elements']} | {r['nodes']} | {r['rr_min']:.3f} / {r['rr_p1']:.3f} "
              f"| {r['dihedral']:.1f} deg | {100 * r['on_cyl']:.0f} % | {100 * r['screw_vol']:+.2f} % "
              f"| {100 * r['mass']:+.2f} % |")
    return rows


if __name__ == "__main__":
    main()
