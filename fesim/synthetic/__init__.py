"""Synthetic data: the lumbar-vertebra phantom and the synthetic cohort generator.

This package is a data source beside the pipeline, not a stage of it: it builds
CT volumes and study designs that the pipeline reads like any user's scans.
``phantom`` is the single default L4 phantom; ``anatomy`` (one patient's L4, density
pattern and surroundings), ``scan`` (a patient imaged in a pose) and ``dxa`` (the
patient's simulated DXA exam) make the realistic cohort of ``cohort``. It may import
from ``fesim.imaging`` and ``fesim.io``; no pipeline stage imports from it.
"""
