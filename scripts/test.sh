#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what the tests need, then run pytest.
# torch==2.13.0 (CPU) is the correctness oracle only; jaxmap never imports it at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh '.[test]'
exec python -m pytest "$@"
