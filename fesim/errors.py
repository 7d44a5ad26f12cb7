"""Exceptions raised for bad input or unsolvable problems.

Every error a user can cause derives from :class:`FesimError`; the CLI turns it into a
one-line message on stderr and exit code 2.
"""


class FesimError(Exception):
    """Base class of all user-facing fesim errors."""


class InputError(FesimError):
    """A file or folder given by the user cannot be used."""


class DicomError(InputError):
    """A DICOM series is missing, malformed, or not a usable CT series."""


class ManifestError(InputError):
    """A study's manifest or options file has problems: malformed (one message), or a list
    of ``problems`` found by validation, all reported at once."""

    def __init__(self, source, problems=None):
        if problems is None:  # one message: the file cannot be read as a manifest at all
            self.problems = [str(source)]
            super().__init__(str(source))
            return
        self.problems = list(problems)
        # one line, every problem in it: the CLI reports an error in one line
        super().__init__(f"{source}: {len(self.problems)} problem(s): " + "; ".join(self.problems))


class NiftiError(InputError):
    """A NIfTI image or label map cannot be used."""


class CalibrationError(FesimError):
    """HU to BMD calibration failed (rods not found, poor fit, ...)."""


class MaterialError(FesimError):
    """A material law or density conversion cannot be applied (unknown name, BMD of a
    calibration material the equation is not defined for, ...)."""


class SegmentationError(FesimError):
    """The vertebra could not be segmented (empty mask, ...)."""


class ScrewPlanError(FesimError):
    """A screw trajectory cannot be planned or leaves the bone."""


class MeshError(FesimError):
    """Meshing failed or produced a mesh below the quality thresholds."""


class ModelError(FesimError):
    """A finite-element model is ill-posed (no supports, rigid-body motion, ...)."""


class SolverError(FesimError):
    """The linear solver failed (singular system, no convergence, ...)."""


class ResultError(FesimError):
    """A scan result (``result.json``) lacks a key of the contract or holds a malformed value."""


class OptionError(InputError):
    """A command-line option or run option has an invalid value."""


class ResourceError(FesimError):
    """The work would exceed the available memory (predicted before allocating)."""


class DependencyError(FesimError):
    """An optional dependency that the requested feature needs is not installed."""


class RegistrationError(FesimError):
    """A follow-up scan cannot be registered to its baseline (another vertebra or patient,
    too little overlap, a large residual)."""
