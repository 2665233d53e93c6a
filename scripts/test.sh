#!/usr/bin/env bash
# The test command (see README): installs what the tests need, then runs pytest.
# Arguments go to pytest, e.g.  scripts/test.sh -k tansu -x   or   scripts/test.sh -m "not integration"
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
if [ -z "${PYTHON:-}" ]; then
    if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
exec "$PYTHON" -m pytest -q "$@"
