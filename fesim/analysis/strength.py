"""Strength to failure by sequences of sparse linear solves (secant method with damage).

Failure model (per bone element; screws stay elastic)
    Equivalent measure: the principal-strain ratio
    ``r = max(-eps_min / eps_yc, eps_max / eps_yt)`` with the vertebral trabecular yield
    strains of Kopperdahl & Keaveny 1998 (0.84 % compression, 0.78 % tension) by default.
    A strain criterion is used (not Drucker-Prager) because bone yield *strains* are nearly
    independent of density and asymmetric in tension and compression, so it needs no
    friction parameter (not published for the MECHANICAL FINDER protocol), and
    it gives a yield stress ``sigma_y = E * eps_yc`` for every density (Keyak's yield law has
    no finite value below ash density 0.2 g/cm^3, i.e. most osteoporotic trabecular bone).

    Post-yield: the stress ratio ``s(r)`` is 1 up to yield, then perfectly plastic
    (``softening=0``) or falls linearly with slope ``softening`` per unit of ``r``; at
    ``r >= fail_ratio`` the element has failed and keeps ``residual`` of its modulus.
    The secant modulus is ``E0 * s(r) / r``. Damage is irreversible: an element's secant
    factor never increases, which makes the fixed-point iteration monotone.

Solution strategy
    Displacement control. For fixed moduli the response is linear in the applied
    displacement ``delta``, so each secant iteration is *one* solve for a unit displacement
    and ``r(delta) = delta * r_unit``. Before each solve the change of force the new moduli
    would cause is predicted to first order from the element strain energies ``U_e`` of the
    current solution (``dF/F = sum(dE_e/E_e U_e) / sum(U_e)``: the potential energy is
    stationary in the free unknowns); the step is converged, without that solve, when the
    prediction is below ``tol_force`` and less than ``tol_changed`` of the bone volume would
    lose more than ``tol_modulus`` (2 %) of its modulus. Every solve reuses the sparsity
    pattern, updates only the changed elements' entries in place (one compiled pass over
    their nodes' rows), computes the failure measure in one compiled pass from the cached
    barycentric gradients, keeps the preconditioner (its smoother follows the new moduli)
    (rebuilt when CG converges 1.5x slower per decade than after its set-up and a solve
    needs over a quarter of the cold solve's iterations), warm-starts
    from the previous solution and at least halves the residual of that warm start
    (``correction_rtol``): CG's usual tolerance relative to the load can already be met after
    a local change of moduli, and the change would then be left unresolved (on the phantom,
    0.5 against 0.1 moved the peaks by at most 0.5 % with far fewer CG iterations:
    ``benchmarks/strength.py --correction-rtol 0.1``).

    Fewer solves per analysis (settings in :class:`StrengthSettings`):

    * *early stop past the peak* (``stop_early``, default): within a step that starts from
      the last solution, damage only grows and the force falls with every modulus, so each
      solved force bounds the step's converged force from above; once one is ``stop_drop``
      below the peak the curve has passed its peak, and the remaining iterations of that
      step (often all ``max_iter`` of them: the secant iteration converges slowly past a
      limit point) are skipped. The curve up to the peak, and so the peak, are those of
      iterating the step to convergence; only the last point and the failed volume differ.
    * *extrapolated start* (``extrapolate``, off): while the curve rises steadily, a step
      starts from the failure measure extrapolated linearly from the last two steps; that
      trial commits no damage (the running minimum that keeps damage irreversible starts
      after its solve). It saved no solves on the phantom compression and moved its peak
      by -1.4 % (``benchmarks/RESULTS.md``).
    * *volume criterion near failure* (``tol_changed_from``, off): the changed volume that
      ``tol_changed`` bounds counts only elements whose failure measure has reached this
      fraction of the ratio where their stress starts to fall, on the argument that yielded,
      still perfectly plastic elements change their moduli smoothly and the energy predictor
      accounts for them. At 0.6 it saved 10-13 % of the solves with peaks within 0.05 % on the
      osteoporotic phantom of ``benchmarks/strength.py`` and the real L4 at 3 mm, but on the
      default phantom of ``benchmarks/scan.py`` (both screws' mesh, left screw run) it moved
      the compression peak +4.3 % (8849.6 against 8488.9 N counting every element, and
      8445.6 N with tolerances ten times tighter): not the default.
    * *adaptive increments* (``max_step_fraction``, ``step_growth``, ``min_step_fraction``,
      off): the increment grows after steps converged with at most one solve and halves
      after hard steps; a coarse step past the peak returns to the step before the peak and
      approaches it again with the smallest increment. Fewer steps, not fewer solves.

    Two presets (:data:`ACCURACY`): ``standard`` (default: increments of 0.1 x the
    surrogate's failure displacement, up to 10 solves per step, 0.2 % volume / 0.5 % force)
    and ``screening`` (0.2 x, 3 solves, 1 % / 2 %: about 3x fewer solves; on the phantom
    pullout it overestimated the peak by ~8 %).

The fast linear surrogate is the load at which ``surrogate_fraction`` (2 %) of the bone volume
exceeds its yield strain, from the first (elastic) solve: ``F = K * delta_q``.
"""

from __future__ import annotations

import time
import logging
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..errors import InputError
from ..fem.model import Model, StaticProblem
from ..fem.post import element_fields
from ..cells import TET10_EDGES
from ..fem import elements, kernels
from ..material.failure import YIELD_STRAIN_COMPRESSION, YIELD_STRAIN_TENSION
from ..mesh.tetmesh import TetMesh
from ..registry import Registry
from .loadcases import LoadCase

log = logging.getLogger(__name__)


@dataclass
class FailureModel:
    """Parameters of the element failure model (strains are fractions, not %)."""

    eps_yield_compression: float = YIELD_STRAIN_COMPRESSION
    eps_yield_tension: float = YIELD_STRAIN_TENSION
    softening: float = 0.0
    fail_ratio: float = 2.5
    failure_span: float = 1.5
    residual: float = 0.02

    def stress_ratio(self, r: np.ndarray) -> np.ndarray:
        """Stress / yield stress as a function of the strain ratio ``r`` (continuous).

        1 up to yield; then ``1 - softening (r - 1)``; from ``fail_ratio`` it falls linearly to
        ``residual`` over ``failure_span`` (0 = abrupt failure); never below ``residual``.
        """
        r = np.asarray(r, dtype=float)
        s = np.ones_like(r)
        y = r > 1.0
        s[y] = 1.0 - self.softening * (r[y] - 1.0)
        s_f = max(1.0 - self.softening * (self.fail_ratio - 1.0), self.residual)
        f = r >= self.fail_ratio
        if self.failure_span > 0:
            s[f] = s_f - (s_f - self.residual) * (r[f] - self.fail_ratio) / self.failure_span
        else:
            s[f] = self.residual
        return np.maximum(s, self.residual)

    def secant_factor(self, r: np.ndarray) -> np.ndarray:
        return self.stress_ratio(r) / np.maximum(r, 1.0)

    def describe(self) -> str:
        post = ("perfectly plastic" if self.softening == 0 else f"softening slope {self.softening:g}")
        if np.ndim(self.eps_yield_compression) or np.ndim(self.eps_yield_tension):
            yld = ("per-element yield strains sigma_y / E (median compression "
                   f"{100 * float(np.median(self.eps_yield_compression)):.2f} %, tension "
                   f"{100 * float(np.median(self.eps_yield_tension)):.2f} %)")
        else:
            yld = (f"compression {100 * self.eps_yield_compression:.2f} %, tension "
                   f"{100 * self.eps_yield_tension:.2f} %")
        return (f"principal-strain yield ({yld}), {post}, failure from {self.fail_ratio:g} x yield "
                f"strain, stress falling to {self.residual:g} of yield over {self.failure_span:g} x yield strain")


@dataclass
class StrengthResult:
    """Outcome of one load case (forces N, displacements mm, volumes mm^3)."""

    name: str
    stiffness_N_per_mm: float
    strength_N: float
    displacement_at_peak_mm: float
    surrogate_strength_N: float
    curve_displacement_mm: list
    curve_force_N: list
    yielded_volume_mm3: float  # at the peak
    failed_volume_mm3: float  # at the end of the traced curve (its first solve past the drop)
    n_solves: int
    n_steps: int
    converged_steps: int
    passed_peak: bool
    timings_s: dict = field(default_factory=dict)
    criterion: str = ""
    cg_iterations: int = 0  # CG iterations of all solves (direct solvers count 1 per solve)
    # state at the peak and per-step snapshots, for VTK output
    u_peak: np.ndarray | None = field(default=None, repr=False)
    factor_peak: np.ndarray | None = field(default=None, repr=False)
    ratio_peak: np.ndarray | None = field(default=None, repr=False)
    snapshots: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        for k in ("u_peak", "factor_peak", "ratio_peak", "snapshots"):
            d.pop(k)
        return d


def strain_ratio(mesh: TetMesh, u: np.ndarray, E, nu, fm: FailureModel, with_sed: bool = False,
                 affine: bool | None = None, gradients: np.ndarray | None = None):
    """Principal-strain ratio ``r`` per element for displacement ``u`` (N, 3).

    ``with_sed=True`` also returns each element's strain-energy density (MPa, from its mean
    strain and stress). ``affine``: as in :func:`fesim.fem.post.element_fields`.
    ``gradients``: the barycentric gradients (M, 4, 3) of straight-sided tet4/tet10
    (:meth:`fesim.fem.assembly.Assembler.barycentric_gradients`); with numba the measure is
    then one compiled pass (same values to round-off).
    """
    if gradients is not None and kernels.HAVE_NUMBA and mesh.cells.shape[1] in (4, 10):
        M = mesh.n_elements
        lam, mu = elements.lame(np.broadcast_to(np.asarray(E, float), (M,)),
                                np.broadcast_to(np.asarray(nu, float), (M,)))
        r, sed = np.empty(M), np.empty(M)
        kernels._strain_ratio_affine(
            mesh.cells, gradients, TET10_EDGES.astype(np.int64), np.ascontiguousarray(u, dtype=float),
            np.ascontiguousarray(lam), np.ascontiguousarray(mu),
            np.ascontiguousarray(np.broadcast_to(np.asarray(fm.eps_yield_compression, float), (M,))),
            np.ascontiguousarray(np.broadcast_to(np.asarray(fm.eps_yield_tension, float), (M,))), r, sed)
        return (r, sed) if with_sed else r
    fields = element_fields(mesh.points, mesh.cells, u, E, nu, affine=affine)
    ps = fields.principal_strain
    r = np.maximum(np.maximum(-ps[:, 0] / fm.eps_yield_compression, ps[:, 2] / fm.eps_yield_tension), 0.0)
    return (r, fields.sed) if with_sed else r


def nonlocal_average(mesh: TetMesh, vol: np.ndarray, select: np.ndarray, radius_mm: float):
    """Row-normalised sparse operator averaging element values over a sphere of ``radius_mm``.

    Weights are volume times a bell ``(1 - (d/R)^2)^2`` of the centroid distance ``d``, among
    the ``select``-ed elements (bone). The element itself always counts. Averaging the failure
    measure over a fixed physical radius is the classical regularisation of strain-softening
    models: without it the strains at the singular corners of a bonded screw (entry edge, tip)
    grow without bound under refinement and the peak force depends on the mesh.
    """
    import scipy.sparse as sp
    from scipy.spatial import cKDTree

    idx = np.nonzero(select)[0]
    c = mesh.centroids()[idx]
    tree = cKDTree(c)
    D = tree.sparse_distance_matrix(tree, radius_mm, output_type="coo_matrix")
    w = (1.0 - (D.data / radius_mm) ** 2) ** 2 * vol[idx][D.col]
    n = idx.size
    rows = np.concatenate([D.row, np.arange(n)])
    cols = np.concatenate([D.col, np.arange(n)])
    vals = np.concatenate([w, vol[idx]])
    W = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    W = sp.diags(1.0 / np.asarray(W.sum(axis=1)).ravel()) @ W
    return idx, W.tocsr()


def _weighted_quantile(x, w, q):
    order = np.argsort(x)
    cw = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cw, q * cw[-1])])


@dataclass(frozen=True)
class StrengthSettings:
    """How a strength analysis traces its force-displacement curve (all of it but the failure
    model, :class:`FailureModel`, and the mesh and load case).

    Displacements are fractions of the surrogate's failure displacement ``delta_q`` (mm), the
    displacement at which ``surrogate_fraction`` of the bone volume yields in the elastic
    solution; strains and tolerances are fractions, not %.

    Attributes
    ----------
    solver : linear-solver back end (:data:`fesim.fem.solvers.SOLVERS`, or ``"auto"``)
    max_steps : load steps at most (0: the elastic solve only)
    step_fraction : first displacement increment, fraction of ``delta_q``
    max_step_fraction : largest increment the step control may grow to (fraction of
        ``delta_q``); None: ``step_fraction`` (no growth). The range always spans ``step_fraction``.
    min_step_fraction : the increment the step control refines to around the peak and after
        a step that needed many solves; None: ``step_fraction`` (fixed steps)
    step_growth : factor by which the increment grows after a step that converged with at
        most one solve
    extrapolate : start rising steps from the failure measure extrapolated linearly from the
        last two steps (module docstring); the trial commits no damage
    stop_early : stop at the first solve that proves the force ``stop_drop`` below the peak
        (module docstring) instead of iterating that step to convergence
    max_iter : secant solves per step at most
    tol_changed : a step is converged when less than this fraction of the bone volume would
        change its modulus by more than ``tol_modulus``...
    tol_force : ... and the predicted relative force change is below this
    tol_changed_from : the volume counted by ``tol_changed`` is that of elements whose failure
        measure has reached this fraction of the ratio where their stress starts to fall
        (``fail_ratio``; 1, the yield, with softening); 0 counts every element (the scheme up
        to commit 3b19690)
    tol_modulus : relative modulus change counted by ``tol_changed``
    stop_drop : stop once the force has fallen this fraction below the peak
    surrogate_fraction : bone volume fraction yielded at the surrogate strength
    rtol : CG tolerance of the first (cold) solve, relative to the load
    correction_rtol : residual reduction of each warm-started secant solve
    nonlocal_radius_mm : radius (mm) over which the failure measure is averaged
        (:func:`nonlocal_average`); 0 uses each element's own strain
    snapshot_every : keep (delta, u, factor) every n steps for a ParaView series (0 = none)
    """

    solver: str = "auto"
    max_steps: int = 60
    step_fraction: float = 0.1
    max_step_fraction: float | None = None
    min_step_fraction: float | None = None
    step_growth: float = 1.0
    extrapolate: bool = False
    stop_early: bool = True
    max_iter: int = 10
    tol_changed: float = 2e-3
    tol_force: float = 5e-3
    tol_changed_from: float = 0.0
    tol_modulus: float = 0.02
    stop_drop: float = 0.05
    surrogate_fraction: float = 0.02
    rtol: float = 1e-5
    correction_rtol: float = 0.5
    nonlocal_radius_mm: float = 1.5
    snapshot_every: int = 0

    def __post_init__(self):
        if not (self.step_fraction > 0 and self.step_range[0] > 0):
            raise InputError(f"strength settings need positive increments, got step_fraction "
                             f"{self.step_fraction!r}, min_step_fraction {self.min_step_fraction!r}")
        if self.max_steps < 0 or self.max_iter < 0 or self.step_growth < 1.0:
            raise InputError("strength settings need max_steps >= 0, max_iter >= 0 and step_growth >= 1")

    @property
    def step_range(self) -> tuple:
        """(smallest, largest) increment, fractions of ``delta_q``; always spans ``step_fraction``."""
        lo, hi = self.min_step_fraction, self.max_step_fraction
        s = self.step_fraction
        return (s if lo is None else min(lo, s), s if hi is None else max(hi, s))

    def replace(self, **changes) -> "StrengthSettings":
        """A copy with ``changes`` (setting names as keywords); unknown names are refused."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise InputError(f"unknown strength setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)


@dataclass(frozen=True)
class Accuracy:
    """A named preset of :class:`StrengthSettings`."""

    name: str
    description: str
    settings: StrengthSettings


#: Strength-analysis presets (``--strength-accuracy``). The first is the default.
ACCURACY = Registry("strength accuracy")
ACCURACY.add(Accuracy("standard", "converged to 0.5 % in force (default)",
                      StrengthSettings(step_fraction=0.1, max_iter=10, tol_changed=2e-3, tol_force=5e-3)))
ACCURACY.add(Accuracy("screening", "~3x fewer solves, peaks ~5-10 % high",
                      StrengthSettings(step_fraction=0.2, max_iter=3, tol_changed=1e-2, tol_force=2e-2)))


@dataclass
class _State:
    """A converged point of the curve, to return to when the step is refined near the peak."""

    delta: float
    h: float  # the increment that reached it
    factor: np.ndarray
    rmax: np.ndarray
    sol: tuple  # (u_unit, F_unit, r_unit, w_unit, moduli factor solved for)
    r_prev: np.ndarray  # r_unit at the start of the step that reached it (extrapolation)
    n_curve: int
    n_snap: int


def run_strength(mesh: TetMesh, E0: np.ndarray, nu: np.ndarray, case: LoadCase,
                 fm: FailureModel | None = None, settings: StrengthSettings | None = None, *,
                 assembler=None, can_fail: np.ndarray | None = None, progress=None,
                 trace: list | None = None, **changes) -> StrengthResult:
    """Trace the force-displacement curve of ``case`` through its peak.

    Parameters
    ----------
    mesh : TetMesh; E0, nu : (M,) initial moduli (MPa) and Poisson's ratios
    case : LoadCase; fm : FailureModel (defaults to Kopperdahl-Keaveny strains, plastic)
    settings : StrengthSettings (default: the ``standard`` preset)
    assembler : a :class:`fesim.fem.assembly.Assembler` of this mesh to reuse (pattern and
        element matrices are then shared between load cases)
    can_fail : (M,) bool, elements that may yield (default: bone; screws and caps stay elastic).
        ``fm``'s yield strains may then be per-element arrays (M,).
    progress : callable, optional
        Called after every load step as ``progress(step, max_steps, force_N)``.
    trace : list, optional
        Receives one dict per linear solve: solve and step number, displacement (fraction of
        ``delta_q``), force (N), CG iterations, yielded fraction of the bone volume.
    **changes : individual settings overriding those of ``settings``
        (:meth:`StrengthSettings.replace`), e.g. ``max_steps=0``.
    """
    fm = fm or FailureModel()
    st = settings or ACCURACY[ACCURACY.names()[0]].settings
    if changes:
        st = st.replace(**changes)
    t0 = time.perf_counter()
    bone = mesh.is_bone() if can_fail is None else np.asarray(can_fail, bool)
    vol = np.abs(elements.element_volumes(mesh.points, mesh.cells))
    model = Model(mesh, E0, nu)
    case.apply(model, 1.0)  # unit displacement along the pull direction
    prob = StaticProblem(model, solver=st.solver, rtol=st.rtol, assembler=assembler)
    affine = prob.assembler.affine
    grads = prob.assembler.barycentric_gradients()[0] if affine and mesh.cells.shape[1] in (4, 10) else None
    n_solves = n_cg = 0
    # averaged within each material (bone; caps), never across the bone-cap interface
    groups = [g for g in (bone & mesh.is_bone(), bone & ~mesh.is_bone()) if g.any()]
    avg = ([nonlocal_average(mesh, vol, g, st.nonlocal_radius_mm) for g in groups]
           if st.nonlocal_radius_mm > 0 else [])
    E0 = np.asarray(E0, dtype=float)

    def solve_unit(f):
        nonlocal n_solves, n_cg
        if n_solves:
            prob.set_moduli(E0 * f)
        sol = prob.solve(correction_rtol=st.correction_rtol if n_solves else None)
        n_solves += 1
        n_cg += sol.info.iterations
        force = float(sol.reaction_on(case.driven) @ case.direction)
        r, sed = strain_ratio(mesh, sol.u, E0 * f, model.nu, fm, with_sed=True, affine=affine, gradients=grads)
        r[~bone] = 0.0
        r0 = r.copy()
        for idx, W in avg:
            r[idx] = W @ r0[idx]
        if trace is not None:
            trace.append(dict(solve=n_solves, step=step_no, delta=delta / delta_q,
                              force=delta * force, cg=sol.info.iterations,
                              yielded=float(vol[bone & (f < 1.0 - 1e-9)].sum() / vol[bone].sum())))
        return sol.u, force, r, sed * vol, f.copy()  # element strain energies, mJ

    factor = np.ones(mesh.n_elements)  # secant modulus / initial modulus, last converged step
    delta, delta_q, step_no = 1.0, 1.0, 0
    sol = solve_unit(factor)
    u1, stiffness, r1 = sol[0], sol[1], sol[2]
    t_linear = time.perf_counter() - t0
    q = _weighted_quantile(r1[bone], vol[bone], 1.0 - st.surrogate_fraction)
    delta_q = 1.0 / q if q > 0 else np.inf
    surrogate = stiffness * delta_q
    h = st.step_fraction * delta_q
    h_min, h_max = (f * delta_q for f in st.step_range)

    rmax = np.zeros(mesh.n_elements)  # largest failure measure each element has reached
    r_soft = 1.0 if fm.softening > 0 else fm.fail_ratio  # where the stress starts falling
    r_prev = sol[2]
    curve_d, curve_f = [0.0], [0.0]
    peak = (0.0, 0.0, u1 * 0, factor.copy(), r1 * 0)
    states = [_State(0.0, h, factor.copy(), rmax.copy(), sol, r_prev, 1, 0)]
    i_peak = 0
    converged_steps, passed = 0, False
    snapshots = []
    vol_bone = vol[bone].sum()
    delta, h_prev, refined, rising = 0.0, h, False, True
    for step in range(1, st.max_steps + 1):
        step_no = step
        delta += h
        u_unit, F_unit, r_unit, w_unit, f_sol = sol
        r_start = r_unit
        ok = beyond = False
        solves0 = n_solves
        # Extrapolate the failure measure while the curve still rises steadily; near the peak
        # the step starts from the last solution, so every iterate damages monotonically.
        extrap = st.extrapolate and rising
        r_try = r_unit + (r_unit - r_prev) * (h / h_prev) if extrap else r_unit
        running = factor
        for it in range(st.max_iter + 1):
            new = np.minimum(running, fm.secant_factor(delta * r_try))
            # predicted relative force change (module docstring): from the moduli last solved
            # for, except at a step's plain start, from those of the last step (the force
            # changes below tolerance that it accepted unsolved are not counted again)
            rel = new / (running if it == 0 and not extrap else f_sol) - 1.0
            if not (extrap and it == 0):  # an extrapolated trial commits no damage
                running = new
            dF = float((rel * w_unit).sum() / max(w_unit.sum(), 1e-300))
            big = bone & (np.abs(rel) > st.tol_modulus)
            if st.tol_changed_from > 0:
                big &= delta * r_try >= st.tol_changed_from * r_soft
            frac = vol[big].sum() / vol_bone
            if abs(dF) <= st.tol_force and frac <= st.tol_changed:
                ok = True
                break
            if it == st.max_iter:
                break
            sol = solve_unit(new)
            u_unit, F_unit, r_unit, w_unit, f_sol = sol
            r_try = r_unit
            if st.stop_early and not extrap and delta * F_unit < (1.0 - st.stop_drop) * peak[1]:
                # Damage only grows while this step iterates from the last step's moduli and
                # the force falls with every modulus, so this force bounds the step's
                # converged one from above: the curve has fallen stop_drop below its peak
                # whatever the further iterations. (An extrapolated trial may overshoot.)
                dF, beyond = 0.0, True
                break
        step_solves = n_solves - solves0
        r_prev = r_start
        factor = new
        converged_steps += ok
        rmax = np.maximum(rmax, delta * r_try)
        F = delta * F_unit * (1.0 + dF)
        log.debug("%s step %d: delta %.3f delta_q, %d solves, F %.1f N%s", case.name, step, delta / delta_q,
                  step_solves, F, "" if ok else " (not converged)")
        rising = ok and step_solves <= 3 and F > curve_f[-1]
        curve_d.append(delta)
        curve_f.append(F)
        if st.snapshot_every and step % st.snapshot_every == 0:
            snapshots.append((delta, delta * u_unit, factor.copy()))
        if h > h_min * 1.001:  # coarse steps may be revisited near the peak
            states.append(_State(delta, h, factor.copy(), rmax.copy(), sol, r_prev, len(curve_d), len(snapshots)))
        if F > peak[1]:
            peak = (delta, F, delta * u_unit, factor.copy(), delta * r_try)
            i_peak = len(states) - 1
        if progress is not None:
            progress(step, st.max_steps, F)
        if beyond or F < (1.0 - st.stop_drop) * peak[1]:
            if h > h_min * 1.001 and i_peak > 0:
                # past the peak with coarse steps: return to the step before the peak and
                # approach it again with the finest increment
                s0 = states[i_peak - 1]
                delta, h_prev, sol, r_prev = s0.delta, s0.h, s0.sol, s0.r_prev
                factor, rmax = s0.factor.copy(), s0.rmax.copy()
                del curve_d[s0.n_curve:], curve_f[s0.n_curve:], snapshots[s0.n_snap:], states[i_peak:]
                peak = (s0.delta, curve_f[-1], s0.delta * s0.sol[0], s0.factor.copy(), s0.delta * s0.sol[2])
                h, refined, rising = h_min, True, False
                continue
            passed = True
            break
        h_prev = h
        if F < peak[1] or not ok or step_solves > 3:
            h = max(h_min, 0.5 * h)
        elif step_solves <= 1 and not refined:
            h = min(h_max, st.step_growth * h)
    d_pk, F_pk, u_pk, f_pk, r_pk = peak
    yielded = bone & (f_pk < 1.0 - 1e-9)
    failed = bone & (rmax >= fm.fail_ratio)  # on the failure branch by the end of the curve
    return StrengthResult(
        name=case.name, stiffness_N_per_mm=stiffness, strength_N=F_pk,
        displacement_at_peak_mm=d_pk, surrogate_strength_N=surrogate,
        curve_displacement_mm=curve_d, curve_force_N=curve_f,
        yielded_volume_mm3=float(vol[yielded].sum()), failed_volume_mm3=float(vol[failed].sum()),
        n_solves=n_solves, n_steps=len(curve_d) - 1, converged_steps=converged_steps, passed_peak=passed,
        cg_iterations=n_cg,
        timings_s={"first_linear_solve": t_linear, "total": time.perf_counter() - t0, **prob.timings},
        criterion=f"nonlinear secant: peak of force-displacement curve; {fm.describe()}",
        u_peak=u_pk, factor_peak=f_pk, ratio_peak=r_pk, snapshots=snapshots,
    )
