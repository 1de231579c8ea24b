# Sourced by the scripts here: make .venv with servekit installed (editable) and $1 extras.
#
# pip takes 3-4 s even when it has nothing to do, so the install is skipped when .venv
# already has servekit installed editable from this checkout, by pyproject.toml as it is
# now, with the extras asked for (or more: after ./scripts/test's `dev`, ./scripts/example,
# which asks for none, installs nothing). The stamp .venv/servekit-install records what the
# last installs were made from; delete it to force a reinstall.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    # Only here: python3 may be a version manager's shim, 0.2 s a start.
    PYTHON=${PYTHON:-python3}
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "servekit needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
        exit 2
    fi
    "$PYTHON" -m venv .venv
fi
extras=${1:-}
stamp=.venv/servekit-install
# Line 1 of the stamp: the checkout and its pyproject.toml; then one line per extra installed.
made_from="$(pwd -P) $(cksum < pyproject.toml)"

_servekit_installed() {
    # pip's record (PEP 610) that servekit is installed editable from this checkout...
    local record
    record=$(echo .venv/lib/python3*/site-packages/servekit-*.dist-info/direct_url.json)
    [ -f "$record" ] || return 1
    grep -Fq "\"file://$(pwd -P)\"" "$record" || return 1
    grep -Eq '"editable": *true' "$record" || return 1
    # ...and the stamp: made from this pyproject.toml, with these extras among those installed
    # (none asked for is met by any: each extra installs servekit itself).
    [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$made_from" ] || return 1
    [ -z "$extras" ] || grep -Fxq -- "$extras" "$stamp"
}

if ! _servekit_installed; then
    target="."
    if [ -n "$extras" ]; then
        target=".[$extras]"
    fi
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$target"
    {
        echo "$made_from"
        # The extras installed before from the same pyproject.toml are installed still.
        if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$made_from" ]; then
            tail -n +2 "$stamp"
        fi
        if [ -n "$extras" ]; then
            echo "$extras"
        fi
    } > "$stamp.new"
    mv "$stamp.new" "$stamp"
fi
unset -f _servekit_installed
