"""A synthetic, denosumab-like longitudinal cohort for exercising the study pipeline.

Each :class:`ScanSpec` describes one simulated QCT visit of one patient: how much denser
than the phantom's default the vertebra is (``density_scale``), which phantom geometry to
draw (``phantom_seed``, fixed per patient because anatomy does not change between visits)
and a simulated DXA areal BMD for the same visit.

Simulation model (all numbers are *assumptions* chosen to resemble published effect sizes,
see the denosumab entries of ``docs/references.md``; nothing here is a result):

* Baseline trabecular density: ``density_scale ~ N(0.65, 0.10)`` clipped to [0.45, 0.90] of
  the phantom default (140 mg/cm^3), i.e. about 65-125 mg/cm^3, mean ~90: osteoporotic to
  osteopenic (QCT trabecular cut-off for osteoporosis ~80 mg/cm^3), with spread between patients.
* DXA lumbar-spine aBMD gain from baseline follows the FREEDOM mean curve, +5.7 % at 12 and
  +7.8 % at 24 months (+9.8 % at 36), scaled by a per-patient responder factor
  ``N(1, 0.35)`` (between-patient SD about 2-3 %), plus DXA precision noise ``N(0, 1 %)`` per
  follow-up visit.
* Volumetric (QCT) gain = the patient's true DXA gain times an amplification factor drawn
  uniformly in [1.5, 2.0] (QCT of trabecular bone responds 1.5-2x more than DXA).
* DXA aBMD = 0.74 g/cm^2 (LS T-score about -2.8) + a density-driven part (SD 0.055 g/cm^2)
  + a patient-level artefact term (SD 0.095 g/cm^2) standing for posterior elements, aortic
  calcification and degenerative change, which persists across visits. This is what makes
  the simulated DXA value only loosely track vertebral density, so that r(POS, DXA aBMD) comes
  out much weaker than r(POS, vBMD) (population r(density, DXA) about 0.5 before clipping);
  any such finding on synthetic data is built in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fesim.errors import InputError

#: Mean DXA lumbar-spine aBMD change from baseline (%) under denosumab 60 mg / 6 months
#: (FREEDOM, docs/references.md). Linear in between, last slope beyond 36 months.
DXA_GAIN_MONTHS = np.array([0.0, 12.0, 24.0, 36.0])
DXA_GAIN_PERCENT = np.array([0.0, 5.7, 7.8, 9.8])

#: Text that reports on synthetic cohorts should carry (passed to ``write_report(notes=...)``).
SIMULATION_NOTE = (
    "Synthetic cohort: densities, treatment response and DXA aBMD are simulated "
    "(fesim.synthetic.cohort). The simulated DXA aBMD includes a patient-level artefact term "
    "(posterior elements, aortic calcification, degenerative change) by assumption, so a weak "
    "correlation of pullout strength with aBMD is built into the data, not a finding."
)


@dataclass(frozen=True)
class ScanSpec:
    """One simulated QCT visit.

    Attributes
    ----------
    patient : str
        Pseudonymous patient ID ("P01", ...).
    month : int
        Months since the start of treatment.
    density_scale : float
        Multiplier on the phantom's default bone density (1 = default), dimensionless.
    phantom_seed : int
        Seed of the phantom geometry; the same for all visits of one patient.
    dxa_abmd_g_cm2 : float
        Simulated DXA lumbar-spine areal BMD in g/cm^2.
    """

    patient: str
    month: int
    density_scale: float
    phantom_seed: int
    dxa_abmd_g_cm2: float

    def as_scan(self, path=None) -> dict:
        """Scan dict for :func:`fesim.study.cohort.run_cohort`.

        With ``path`` None, ``density_scale`` and ``phantom_seed`` are included and so passed
        on to the per-scan function as keyword arguments (it builds the phantom). With the path
        of an image written from this spec they are left out: the image already holds them.
        """
        scan = {"patient": self.patient, "month": self.month, "path": path,
                "dxa_abmd_g_cm2": self.dxa_abmd_g_cm2}
        if path is None:
            scan.update(density_scale=self.density_scale, phantom_seed=self.phantom_seed)
        return scan


def mean_dxa_gain_percent(months) -> np.ndarray:
    """Mean DXA lumbar-spine aBMD change from baseline (%) at ``months`` (array-like)."""
    m = np.asarray(months, dtype=float)
    gain = np.interp(m, DXA_GAIN_MONTHS, DXA_GAIN_PERCENT)
    slope = (DXA_GAIN_PERCENT[-1] - DXA_GAIN_PERCENT[-2]) / (DXA_GAIN_MONTHS[-1] - DXA_GAIN_MONTHS[-2])
    return np.where(m > DXA_GAIN_MONTHS[-1], DXA_GAIN_PERCENT[-1] + slope * (m - DXA_GAIN_MONTHS[-1]), gain)


def synthetic_cohort(n_patients: int = 4, months=(0, 12, 24), seed: int = 0) -> list[ScanSpec]:
    """Simulate a denosumab-treated cohort (see the module docstring for the model).

    Parameters
    ----------
    n_patients : int
        Number of patients (1-999).
    months : sequence of int
        Visit months; must be distinct, non-negative and include 0 (baseline).
    seed : int
        Seed of the random generator; the same seed gives the same cohort.

    Returns
    -------
    list of ScanSpec
        Ordered by patient, then month.
    """
    if not 1 <= int(n_patients) <= 999:
        raise InputError(f"n_patients must be in 1..999, got {n_patients}")
    months = [int(m) for m in months]
    if len(set(months)) != len(months) or min(months) < 0 or 0 not in months:
        raise InputError(f"months must be distinct, >= 0 and include 0, got {months}")
    months = sorted(months)
    rng = np.random.default_rng(seed)
    n = int(n_patients)
    t = np.asarray(months, dtype=float)

    base_scale = np.clip(rng.normal(0.65, 0.10, n), 0.45, 0.90)
    responder = rng.normal(1.0, 0.35, n)
    amplification = rng.uniform(1.5, 2.0, n)
    artefact = rng.normal(0.0, 0.095, n)
    phantom_seeds = rng.integers(0, 2**31 - 1, n)
    # true (noise-free) DXA gain per patient and visit, % from baseline, shape (n, n_months)
    true_gain = responder[:, None] * mean_dxa_gain_percent(t)[None, :]
    dxa_noise = rng.normal(0.0, 1.0, (n, t.size)) * (t > 0)[None, :]
    density_scale = base_scale[:, None] * (1.0 + amplification[:, None] * true_gain / 100.0)
    abmd0 = 0.74 + 0.055 * (base_scale - 0.65) / 0.10 + artefact
    abmd = abmd0[:, None] * (1.0 + (true_gain + dxa_noise) / 100.0)

    width = max(2, len(str(n)))
    return [ScanSpec(patient=f"P{i + 1:0{width}d}", month=m,
                     density_scale=round(float(density_scale[i, j]), 6),
                     phantom_seed=int(phantom_seeds[i]),
                     dxa_abmd_g_cm2=round(float(abmd[i, j]), 4))
            for i in range(n) for j, m in enumerate(months)]
