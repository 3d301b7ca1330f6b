#!/usr/bin/env bash
# The README's test command: set up .venv, then run the whole suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
exec .venv/bin/python -m pytest -n 2 --durations=15 "$@"
