#!/usr/bin/env bash
# Get the Descanning data: the competition's zips from Google Drive, unpacked into DATA_DIR, or
# the synthetic demo set. The work is done by `python -m descan download` (descan/download.py);
# this script only finds a Python that can run it. All options: bash data_download.sh -h
#
#   bash data_download.sh [DATA_DIR]         competition data (default ./data/real)
#   bash data_download.sh --demo [DATA_DIR]  synthetic demo data (no network, a few seconds)
#
# PYTHON: the Python to use (default: python3).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python3}"

fail() {
  printf '\nERROR: %s\n' "$*" >&2
  exit 1
}

[ -f "$HERE/descan/__main__.py" ] || fail "the descan package was not found next to this script
(looked for $HERE/descan/__main__.py). Get the whole repository (git clone) and try again."
command -v "$PY" >/dev/null 2>&1 || fail "no Python found as '$PY'. Install Python 3, or point
PYTHON at one: PYTHON=/path/to/python bash data_download.sh"
"$PY" -c "import numpy, cv2, tqdm" || fail "the Python '$PY' cannot run this kit (its message is
above). Install the requirements:
  $PY -m pip install -r $HERE/requirements.txt
or point PYTHON at a Python that has them, then run this script again. Nothing was changed."

export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m descan download "$@"
