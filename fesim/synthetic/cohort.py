"""A synthetic, denosumab-like longitudinal cohort whose patients differ in anatomy and imaging.

Each :class:`ScanSpec` is one simulated visit (or a same-day repositioned repeat) of one
patient: the patient's anatomy (:mod:`fesim.synthetic.anatomy`, fixed per patient), the bone
at that visit (trabecular and cortical density levels, aortic calcification), the pose in the
CT scanner and the image noise (new at every scan), and the positioning and noise of the
visit's DXA exam. The QCT image is made by :func:`fesim.synthetic.scan.make_scan`, the DXA
aBMD by :func:`fesim.synthetic.dxa.simulate_dxa` from the same patient model: no number is
added to any result, so whatever the study finds comes from anatomy and imaging.

Simulation model (assumptions chosen to resemble published effect sizes, listed with their
sources in ``docs/study.md`` and ``docs/references.md``; nothing here is a result):

* Baseline trabecular level ~ N(85, 18) mg/cm^3 clipped to [50, 135] (osteoporotic to
  osteopenic by QCT); cortical level 700 x N(0.68, 0.07) clipped to [0.5, 0.9] mg/cm^3,
  correlated (r ~ 0.6) with the trabecular level.
* Denosumab: trabecular level rises by a patient's responder factor (N(1, 0.35)) times
  +9 % (12 months), +12.5 % (24), +15.5 % (36) -- about 1.6 x the FREEDOM DXA curve, as
  spine QCT gains are 1.5-2 x DXA's; the cortical level by a second factor (correlated 0.5)
  times +3 / +4.5 / +5.5 %: the largest percentage gain is trabecular (QCT hip substudy).
  The gain is the same at every point of a compartment (the spatial pattern is kept).
* Aortic calcification progresses by 0-10 % a year in extent; osteophytes do not change.
* Every CT scan: a new pose (rotation up to 15 degrees about a random axis, shift up to
  20 mm) and new noise; every DXA exam a new positioning (up to 3 degrees) and noise.
* About a third of the patients get a same-day repositioned repeat at baseline (``repeat=2``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fesim.errors import InputError
from fesim.io.atomic import jsonable

from .anatomy import REFERENCE_TRABECULAR, Anatomy, BoneState, draw_anatomy
from .dxa import DxaResult, draw_positioning, simulate_dxa
from .scan import Pose, draw_pose, make_scan

#: Mean DXA lumbar-spine aBMD change from baseline (%) under denosumab 60 mg / 6 months
#: (FREEDOM, docs/references.md): the reference the simulated DXA gains are compared with.
DXA_GAIN_MONTHS = np.array([0.0, 12.0, 24.0, 36.0])
DXA_GAIN_PERCENT = np.array([0.0, 5.7, 7.8, 9.8])
#: Simulated mean gain (%) of the trabecular and the cortical density level (assumptions).
TRABECULAR_GAIN_PERCENT = np.array([0.0, 9.0, 12.5, 15.5])
CORTICAL_GAIN_PERCENT = np.array([0.0, 3.0, 4.5, 5.5])
#: Voxel size of the simulated QCT scans (mm), as ``fesim demo`` uses.
SCAN_SPACING_MM = (1.0, 1.0, 1.5)
#: Rods of the scans' calibration phantom (mg/cm^3 K2HPO4). No 0 mg/cm^3 rod: its 25 HU contrast
#: with the block is lost by rod detection in about a third of the posed scans.
SCAN_RODS_MG_CM3 = (50.0, 100.0, 150.0, 200.0)

#: Text that reports on synthetic cohorts should carry (passed to ``write_report(notes=...)``).
SIMULATION_NOTE = (
    "Synthetic cohort (fesim.synthetic): every patient has its own L4 anatomy (body size and "
    "height, endplate concavity, cortical thickness, pedicle width and angle, posterior "
    "elements and their cortex, facet-joint degeneration), its own pattern of trabecular "
    "density (subendplate rim, anterior and central loss, posterior-element density), "
    "osteophytes, aortic calcification and visceral fat, and its own "
    "response to denosumab (assumed: trabecular level +9 / +12.5 % and cortical +3 / +4.5 % at "
    "12 / 24 months on average, responder factor SD 35 %). Each CT visit is scanned in a new "
    "pose (up to 15 degrees, 20 mm) with new noise; DXA aBMD is simulated from the same "
    "patient model as an antero-posterior projection (body, posterior elements, osteophytes, "
    "aortic calcification, soft tissue) through an L4 region of interest with bone-edge "
    "detection. No value is added to any result: the correlations come from anatomy and "
    "imaging."
)


def _interp(months, table) -> np.ndarray:
    m = np.asarray(months, dtype=float)
    gain = np.interp(m, DXA_GAIN_MONTHS, table)
    slope = (table[-1] - table[-2]) / (DXA_GAIN_MONTHS[-1] - DXA_GAIN_MONTHS[-2])
    return np.where(m > DXA_GAIN_MONTHS[-1], table[-1] + slope * (m - DXA_GAIN_MONTHS[-1]), gain)


def mean_dxa_gain_percent(months) -> np.ndarray:
    """Mean DXA lumbar-spine aBMD change from baseline (%) in FREEDOM at ``months``."""
    return _interp(months, DXA_GAIN_PERCENT)


@functools.lru_cache(maxsize=512)
def _dxa(anatomy: Anatomy, bone: BoneState, positioning: Pose, seed: int) -> DxaResult:
    return simulate_dxa(anatomy, bone, positioning, seed=seed)


@dataclass(frozen=True)
class ScanSpec:
    """One simulated visit (QCT scan and DXA exam) of one patient.

    Attributes
    ----------
    patient : str
        Pseudonymous patient ID ("P01", ...).
    month : int
        Months since the start of treatment.
    repeat : int
        1 for the visit's scan, 2 for a same-day repositioned repeat.
    anatomy : Anatomy
        The patient's (the same at every visit).
    bone : BoneState
        Density levels (mg/cm^3) and calcification at this visit.
    pose : Pose
        Placement in the CT scanner.
    noise_seed : int
        Seed of the CT image noise.
    dxa_positioning : Pose
    dxa_seed : int
        Seed of the DXA image noise.
    phantom_seed : int
        The patient's seed (anatomy), the same for all visits.
    """

    patient: str
    month: int
    repeat: int
    anatomy: Anatomy
    bone: BoneState
    pose: Pose
    noise_seed: int
    dxa_positioning: Pose
    dxa_seed: int
    phantom_seed: int

    @property
    def density_scale(self) -> float:
        """Trabecular level relative to the default phantom's (140 mg/cm^3)."""
        return round(self.bone.trabecular / REFERENCE_TRABECULAR, 6)

    def dxa(self) -> DxaResult:
        """The visit's simulated DXA exam (computed once, then cached)."""
        return _dxa(self.anatomy, self.bone, self.dxa_positioning, self.dxa_seed)

    @property
    def dxa_abmd_g_cm2(self) -> float:
        return round(float(self.dxa().abmd_g_cm2), 4)

    def make_image(self, spacing_mm=SCAN_SPACING_MM):
        """The visit's QCT scan (:class:`fesim.synthetic.phantom.Phantom`)."""
        from .phantom import PhantomSpec

        spec = PhantomSpec(spacing_mm=tuple(spacing_mm), rods_mg_cm3=SCAN_RODS_MG_CM3)
        return make_scan(self.anatomy, self.bone, self.pose, spec, seed=self.noise_seed)

    def write_image(self, folder, spacing_mm=SCAN_SPACING_MM) -> Path:
        """Write the QCT scan as a DICOM series under ``folder`` (with ``truth.json`` and
        ``patient.json``: anatomy, bone, pose, DXA); returns the series folder."""
        from .phantom import write_phantom

        folder = Path(folder)
        ph = self.make_image(spacing_mm)
        write_phantom(ph, folder, patient={"PatientID": f"SYN-{self.patient}",
                                           "PatientName": f"SYNTH^{self.patient}"})
        info = {"patient": self.patient, "month": self.month, "repeat": self.repeat,
                "anatomy": asdict(self.anatomy), "bone": asdict(self.bone),
                "pose": asdict(self.pose), "dxa": asdict(self.dxa())}
        (folder / "patient.json").write_text(json.dumps(jsonable(info), indent=1))
        return folder / "dicom"

    def as_scan(self, path=None) -> dict:
        """Scan dict for :func:`fesim.study.cohort.run_cohort`, with the simulated DXA.

        With ``path`` None, ``density_scale`` and ``phantom_seed`` are included and so passed
        on to a custom per-scan function as keyword arguments; with the path of the image
        written from this spec they are left out.
        """
        d = self.dxa()
        scan = {"patient": self.patient, "month": self.month, "repeat": self.repeat, "path": path,
                "dxa_abmd_g_cm2": round(float(d.abmd_g_cm2), 4),
                "dxa_tscore": round(float(d.tscore), 2)}
        if path is None:
            scan.update(density_scale=self.density_scale, phantom_seed=self.phantom_seed)
        return scan


def synthetic_cohort(n_patients: int = 4, months=(0, 12, 24), seed: int = 0,
                     repeat_fraction: float = 1 / 3) -> list[ScanSpec]:
    """Simulate a denosumab-treated cohort (see the module docstring for the model).

    Parameters
    ----------
    n_patients : int
        Number of patients (1-999).
    months : sequence of int
        Visit months; distinct, non-negative, including 0 (baseline).
    seed : int
        Seed of the random generator; the same seed gives the same cohort.
    repeat_fraction : float
        Fraction of the patients (rounded) with a same-day repositioned repeat at baseline.

    Returns
    -------
    list of ScanSpec
        Ordered by patient, then month, then repeat.
    """
    if not 1 <= int(n_patients) <= 999:
        raise InputError(f"n_patients must be in 1..999, got {n_patients}")
    months = [int(m) for m in months]
    if len(set(months)) != len(months) or min(months) < 0 or 0 not in months:
        raise InputError(f"months must be distinct, >= 0 and include 0, got {months}")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise InputError(f"repeat_fraction must lie in [0, 1], got {repeat_fraction}")
    months = sorted(months)
    rng = np.random.default_rng(seed)
    n = int(n_patients)
    n_rep = int(round(repeat_fraction * n))
    with_repeat = set(rng.choice(n, size=n_rep, replace=False).tolist()) if n_rep else set()
    width = max(2, len(str(n)))
    specs = []
    for i in range(n):
        pseed = int(rng.integers(0, 2**31 - 1))
        prng = np.random.default_rng(pseed)
        anatomy = draw_anatomy(prng)
        u, v = prng.normal(size=2)
        tb0 = float(np.clip(85.0 + 18.0 * u, 50.0, 135.0))
        cb0 = 700.0 * float(np.clip(0.68 + 0.07 * (0.6 * u + 0.8 * v), 0.5, 0.9))
        r_t = max(float(prng.normal(1.0, 0.35)), -0.2)
        r_c = max(0.5 * r_t + 0.5 * float(prng.normal(1.0, 0.35)), -0.2)
        plaque_rate = float(prng.uniform(0.0, 0.10))
        for m in months:
            bone = BoneState(
                trabecular=round(tb0 * (1.0 + r_t * float(_interp(m, TRABECULAR_GAIN_PERCENT)) / 100), 4),
                cortical=round(cb0 * (1.0 + r_c * float(_interp(m, CORTICAL_GAIN_PERCENT)) / 100), 4),
                plaque_scale=round(1.0 + plaque_rate * m / 12.0, 4))
            for rep in ((1, 2) if (i in with_repeat and m == months[0]) else (1,)):
                specs.append(ScanSpec(
                    patient=f"P{i + 1:0{width}d}", month=m, repeat=rep, anatomy=anatomy, bone=bone,
                    pose=draw_pose(prng), noise_seed=int(prng.integers(0, 2**31 - 1)),
                    dxa_positioning=draw_positioning(prng),
                    dxa_seed=int(prng.integers(0, 2**31 - 1)), phantom_seed=pseed))
    return specs


def baseline_only(specs) -> list[ScanSpec]:
    """The first scans (``repeat == 1``) of the baseline visits."""
    return [s for s in specs if s.repeat == 1 and s.month == min(x.month for x in specs)]

