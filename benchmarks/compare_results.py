"""Compare two result.json files value by value: are the results of a change unchanged?

    python benchmarks/compare_results.py BEFORE/result.json AFTER/result.json

Every leaf (number, string, flag) is compared exactly (NaN equal to NaN, an int not equal to
a float), and every object's key order; wall times (anything under a ``timings_s`` key) are
counted apart, since they differ from run to run. Exits 1 when anything else differs. Produce
both sides from the same input with numpy's global random state seeded the same way (as the
cohort runner does per scan: ``numpy.random.seed(0)`` before ``fesim.pipeline.run_scan``), since
the AMG set-up draws from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def compare(a, b, path: str = "") -> dict:
    """``{"leaves", "numbers", "order", "missing", "diff", "timing"}`` of two JSON values."""
    out = {"leaves": 0, "numbers": 0, "order": [], "missing": [], "diff": [], "timing": []}
    _walk(a, b, path, out)
    return out


def _walk(a, b, path, out):
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            out["order"].append(path or "/")
        for k in a:
            if k in b:
                _walk(a[k], b[k], f"{path}/{k}", out)
        out["missing"] += [f"{path}/{k}" for k in set(a) ^ set(b)]
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out)
        return
    out["leaves"] += 1
    out["numbers"] += isinstance(a, (int, float)) and not isinstance(a, bool)
    nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    if type(a) is not type(b) or not (a == b or nan):
        out["timing" if "/timings_s" in path else "diff"].append((path, a, b))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args(argv)
    a, b = (json.loads(f.read_text(encoding="utf-8")) for f in (args.before, args.after))
    out = compare(a, b)
    print(f"{out['leaves']} values ({out['numbers']} numbers); {len(out['timing'])} wall times differ "
          f"(timings_s); other differences: {len(out['diff'])}; keys missing on one side: "
          f"{len(out['missing'])}; key order differs in: {out['order'] or 'none'}")
    for path, x, y in out["diff"]:
        print(f"  {path}: {x!r} -> {y!r}")
    for path in out["missing"]:
        print(f"  only on one side: {path}")
    return 1 if out["diff"] or out["missing"] or out["order"] else 0


if __name__ == "__main__":
    sys.exit(main())
