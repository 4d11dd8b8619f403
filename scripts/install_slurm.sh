#!/usr/bin/env bash
# Debian's SLURM (slurm-wlm: slurmctld, slurmd, sbatch, srun) and munge, for tests/test_slurm.py,
# which starts a private one-node cluster from them and runs docs/scale-out.md's SLURM recipes.
# Root only, through apt-get; anywhere else it says why and exits 0 (those tests then skip,
# saying why). The packages' own services are not started (policy-rc.d during the install).
set -uo pipefail
if command -v slurmctld >/dev/null 2>&1 || [ -x /usr/sbin/slurmctld ]; then
    if command -v munged >/dev/null 2>&1 || [ -x /usr/sbin/munged ]; then
        echo "install_slurm.sh: slurm-wlm and munge are already installed"
        exit 0
    fi
fi
if [ "$(id -u)" != 0 ]; then
    echo "install_slurm.sh: not root; SLURM not installed (tests/test_slurm.py will be skipped)" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm.sh: no apt-get; SLURM not installed (tests/test_slurm.py will be skipped)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d: keep the packages' own services from starting (the tests start private daemons).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
if apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null; then
    echo "install_slurm.sh: installed $(dpkg-query -W -f='slurm-wlm ${Version}, ' slurm-wlm 2>/dev/null)$(dpkg-query -W -f='munge ${Version}' munge 2>/dev/null)"
else
    status=$?
    echo "install_slurm.sh: apt-get could not install slurm-wlm and munge (status $status); tests/test_slurm.py will be skipped" >&2
fi
exit 0
