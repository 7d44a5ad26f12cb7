"""Command-line interface (placeholder until the pipeline lands)."""
import sys


def main(argv=None):
    print("fesim: pipeline not yet wired", file=sys.stderr)
    return 2
