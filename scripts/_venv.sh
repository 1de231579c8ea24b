# Sourced by the scripts here: make .venv with servekit installed (editable) and $1 extras.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "servekit needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
    exit 2
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
target="."
if [ -n "${1:-}" ]; then
    target=".[$1]"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
