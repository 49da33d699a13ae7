#!/usr/bin/env bash
# Sets up .venv from pyproject, then runs the whole test suite (a real local Ray cluster, real MLflow
# server, real WebDataset tars). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python -m pytest "$@"
