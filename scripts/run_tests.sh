#!/usr/bin/env bash
# The README's test command: set up .venv, then run the whole suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_venv.sh
# Two pytest workers on two cores, one thread each: torch's OpenMP threads on an oversubscribed CPU made tiny-model
# tests up to 20x slower (a 250-step sampling test: 6 s with one thread, 110 s with two while another job ran).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec .venv/bin/python -m pytest -n 2 --durations=15 "$@"
