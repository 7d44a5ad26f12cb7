#!/bin/sh
# Install the peer solvers of benchmarks/solve.py into a separate venv (default ../bench-venv beside the repository,
# override with FESIM_PEER_VENV). fesim's own environment is not touched.
#   PETSc GAMG: Debian's python3-petsc4py for the system Python (/usr/bin/python3), made visible
#               to the venv by --system-site-packages (petsc4py from PyPI builds PETSc from source).
#   NGSolve:    the PyPI wheel `ngsolve` (requirements-peers.txt).
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${FESIM_PEER_VENV:-$(dirname "$(dirname "$HERE")")/bench-venv}
if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get install -y --no-install-recommends python3-petsc4py python3-venv || \
        echo "install_peers: python3-petsc4py not installed (PETSc GAMG peer will be skipped)"
fi
/usr/bin/python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -r "$HERE/requirements-peers.txt"
# Debian reaches petsc4py through the /usr/lib/petsc alternative of the -dev package; point the
# venv at the runtime package's directory instead.
PETSC_PY=$(ls -d /usr/lib/petscdir/petsc*/*-real/lib/python3/dist-packages 2>/dev/null | tail -1)
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -n "$PETSC_PY" ] && echo "$PETSC_PY" > "$SITE/fesim-peers-petsc4py.pth"
"$VENV/bin/python" -c "import ngsolve; print('ngsolve', ngsolve.__version__)" || true
"$VENV/bin/python" -c "import petsc4py; print('petsc4py', petsc4py.__version__)" || true
