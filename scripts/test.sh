#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what the tests need, then run pytest.
# torch==2.13.0 (CPU) is the correctness oracle only; jaxmap never imports it at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh '.[test]'
# lm-evaluation-harness, to check conditional scores against its loglikelihood
# (tests/test_conditional.py): its HF backend imports with what is installed already, and its
# declared dependencies (datasets, evaluate, sacrebleu, ...) are what its tasks need, not it.
python -m pip install --quiet --disable-pip-version-check --no-deps lm_eval==0.4.13
# The interactive map's browser test drives Debian's chromium (tests/test_map_browser.py; it is
# skipped, saying why, when no browser can be had). Installed only where missing, as root.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
        >/dev/null || echo "test.sh: could not install chromium; the browser tests will be skipped" >&2
fi
# Debian's SLURM and munge for tests/test_slurm.py's private one-node cluster (root only; those
# tests skip, saying why, where it cannot be had).
bash scripts/install_slurm.sh
exec python -m pytest "$@"
