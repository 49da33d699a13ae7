#!/usr/bin/env bash
# Sets up .venv from pyproject, then runs ruff with the project's settings (pyproject.toml [tool.ruff]).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec ruff check .
