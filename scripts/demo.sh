#!/usr/bin/env bash
# Sets up .venv from pyproject, then runs the local single-node pipeline on the Flickr8k mini set.
# Outputs go under runs/mini/; extra arguments go to `vsa pipeline` (e.g. --data ../other/flickr8k).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec vsa pipeline "$@"
