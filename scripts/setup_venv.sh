#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment in .venv at the repo root. Sourced by the README's two
# commands (scripts/run_tests.sh, scripts/run_demo.sh); safe to run again: it reinstalls only when setup.cfg or
# this file changed.
#
# torch is pinned here, not in setup.cfg (which keeps a range): on these machines `torch==2.14.1` and
# `torchvision==0.29.1` are a matching pair served from local disk. torchvision is needed by timm (the demo's
# EfficientNet-Lite0 alignment encoder); PyPI's torchvision does not import beside every local torch build, so the pair is pinned together.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.diffusers-repa-setup"
WANT="$(cat "$REPO_ROOT/setup.cfg" "$REPO_ROOT/scripts/setup_venv.sh" | sha256sum | cut -d' ' -f1)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[setup] .venv is up to date"
else
  echo "[setup] installing into $VENV (first run: a few minutes)"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[training,demo,eval,test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import torch, torchvision, timm, diffusers_repa" || { echo "[setup] install failed" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
