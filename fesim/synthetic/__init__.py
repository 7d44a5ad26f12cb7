"""Synthetic data: the lumbar-vertebra phantom and the synthetic cohort generator.

This package is a data source beside the pipeline, not a stage of it: it builds
CT volumes (``phantom``) and study designs (``cohort``) that the pipeline reads
like any user's scans. It may import from ``fesim.imaging`` and ``fesim.io``;
no pipeline stage imports from it.
"""
