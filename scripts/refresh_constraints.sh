#!/usr/bin/env bash
# Move the pins to the newest releases: a fresh virtual environment over a copy of this checkout
# with pyproject.toml's upper bounds lifted, the newest versions installed, the whole suite run;
# only if it passes are constraints.txt and pyproject.toml's upper bounds rewritten here.
# Commit the result on its own ("Pins: ..."), with the suite's summary line in the message.
# Usage: bash scripts/refresh_constraints.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$PWD"
scratch="$(mktemp -d "${TMPDIR:-/tmp}/jaxmap-refresh-XXXXXX")"
mkdir "$scratch/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$scratch/src"
python3 -m venv "$scratch/venv"
# shellcheck disable=SC1091
source "$scratch/venv/bin/activate"
python -m pip install --quiet --disable-pip-version-check packaging
python scripts/pin_versions.py relax --root "$scratch/src"
(cd "$scratch/src" && JAXMAP_UNPINNED=1 bash scripts/test.sh "$@")
python scripts/pin_versions.py write --root "$checkout"
git --no-pager diff --stat -- constraints.txt pyproject.toml
