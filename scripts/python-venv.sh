#!/usr/bin/env bash
# Makes the Python virtual environment the tests that play a user's
# application use (the official `openai` package), in .venv-tests/ at the
# repository root, and prints its python. Idempotent: a venv that already
# imports `openai` is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-tests
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import openai" 2>/dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
"$python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40,<3" >&2
"$venv/bin/python" -c "import openai; print('openai', openai.__version__)" >&2
echo "$venv/bin/python"
