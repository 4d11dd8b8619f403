"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd,
with every file they write (key, sockets, state, spool, logs) in a private directory.

Needs root and Debian's ``slurm-wlm`` and ``munge`` (``scripts/install_slurm.sh`` installs them);
:func:`start_cluster` raises :class:`ClusterUnavailable` saying why when the cluster cannot be
had, so that the tests skip with that reason. Known to work with slurm-wlm 22.05 (Debian 12).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# The node and the controller are "localhost", whatever the machine is called: jax.distributed
# connects to the first host of SLURM_STEP_NODELIST, which must resolve.
NODE = "localhost"
CPUS = 2
STAND_IN_GPUS = "/dev/null,/dev/zero"  # two "GPUs", one per CPU


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be brought up here; the message says why."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"({path.name}: no log)"
    return f"{path.name}: " + (" | ".join(text[-lines:]) if text else "(empty)")


class SlurmCluster:
    """The daemons and the environment that talks to them (``env``: SLURM_CONF and PATH)."""

    def __init__(self) -> None:
        missing = [name for name in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo")
                   if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None]
        if missing:
            raise ClusterUnavailable(
                f"SLURM is not installed ({', '.join(missing)} not found); as root, run "
                "scripts/install_slurm.sh (Debian's slurm-wlm and munge)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("a private SLURM cluster needs root (munged runs as the munge user, "
                                     "slurmd launches jobs as their owner)")
        try:
            self.munge_user = pwd.getpwnam("munge")
        except KeyError:
            raise ClusterUnavailable("there is no munge user (is the munge package installed?)") from None
        # Under /tmp rather than pytest's private 0700 directory: munged, running as the munge
        # user, must reach its key and socket.
        self.root = Path(tempfile.mkdtemp(prefix="jaxmap-slurm-"))
        self.root.chmod(0o755)
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs = {name: self.root / "log" / f"{name}.log" for name in ("munged", "slurmctld", "slurmd")}
        self.conf = self.root / "slurm.conf"
        sbin = "/usr/sbin:/sbin"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": os.environ.get("PATH", "") + ":" + sbin}

    # -- set-up -----------------------------------------------------------------------------

    def _write_files(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o711)  # clients reach the socket; the key stays 0400
        key = munge / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        for path in (munge, key):
            os.chown(path, self.munge_user.pw_uid, self.munge_user.pw_gid)
        (self.root / "log").mkdir()
        os.chown(self.root / "log", self.munge_user.pw_uid, self.munge_user.pw_gid)
        for name in ("state", "spool"):
            (self.root / name).mkdir(mode=0o755)
        self.munge_socket = munge / "munge.socket"
        lines = [
            "ClusterName=jaxmap-test",
            f"SlurmctldHost={NODE}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.logs['slurmctld']}",
            f"SlurmdLogFile={self.logs['slurmd']}",
            # No cgroups: a container or CI runner seldom lets slurmd manage them.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/builtin",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # the node has CPUS CPUs, whatever the machine has
            "InactiveLimit=0",
            "MailProg=/bin/true",
            "KillWait=5",
            "MinJobAge=300",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "GresTypes=gpu",
            # A stand-in GPU count (no device files) so that the docs' `--gres=gpu:1` schedules.
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={CPUS} Gres=gpu:{CPUS} State=UNKNOWN",
            f"PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        # gres/gpu drops GPUs without device files; any character devices do for a stand-in.
        (self.root / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={STAND_IN_GPUS}\n")
        # Debian's slurm reads cgroup.conf only with cgroup plugins; none is written.

    def _spawn(self, name: str, command: list[str], **options) -> None:
        log = self.root / "log" / f"{name}.out"
        with open(log, "w") as output:
            self.processes[name] = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True, **options,
            )

    def _failure(self, what: str) -> ClusterUnavailable:
        tails = self.log_tails()
        self.stop()
        return ClusterUnavailable(f"{what}; {tails}")

    def start(self, timeout: float = 60.0) -> None:
        self._write_files()
        deadline = time.monotonic() + timeout
        self._spawn(
            "munged",
            [shutil.which("munged", path=self.env["PATH"]), "--foreground", "--force",
             f"--socket={self.munge_socket}", f"--key-file={self.root / 'munge' / 'munge.key'}",
             f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--log-file={self.logs['munged']}",
             f"--seed-file={self.root / 'munge' / 'munged.seed'}"],
            user=self.munge_user.pw_uid, group=self.munge_user.pw_gid, extra_groups=[],
        )
        while not self.munge_socket.exists():
            if self.processes["munged"].poll() is not None or time.monotonic() > deadline:
                raise self._failure("munged did not start")
            time.sleep(0.1)
        self._spawn("slurmctld", [shutil.which("slurmctld", path=self.env["PATH"]), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [shutil.which("slurmd", path=self.env["PATH"]), "-D", "-N", NODE, "-f", str(self.conf)])
        state = ""
        while time.monotonic() < deadline:
            for name in ("slurmctld", "slurmd"):
                if self.processes[name].poll() is not None:
                    raise self._failure(f"{name} exited with status {self.processes[name].returncode}")
            result = subprocess.run(
                ["sinfo", "--noheader", "--Node", "--format=%T"], env=self.env, capture_output=True, text=True,
            )
            state = result.stdout.strip() or result.stderr.strip()
            if result.returncode == 0 and state.rstrip("*") == "idle":
                return
            if result.returncode == 0 and state.rstrip("*") in ("inval", "drained"):
                reason = subprocess.run(
                    ["sinfo", "--noheader", "--Node", "--format=%E"], env=self.env, capture_output=True, text=True,
                ).stdout.strip()
                raise self._failure(f"slurmctld set the node {state} ({reason})")
            time.sleep(0.5)
        raise self._failure(f"the node was not idle within {timeout:.0f} s (sinfo: {state!r})")

    # -- use --------------------------------------------------------------------------------

    def run(self, command: list[str] | str, cwd: Path, env: dict | None = None, timeout: float = 120, **options):
        return subprocess.run(
            command, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=timeout, **options,
        )

    def wait_idle(self, timeout: float = 150) -> None:
        """Wait until no job is queued or running; raise TimeoutError naming those left."""
        deadline = time.monotonic() + timeout
        while True:
            queue = self.run(["squeue", "--noheader", "--format=%i %T %R"], cwd=self.root).stdout.strip()
            if not queue:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued or running after {timeout:.0f} s: {queue}")
            time.sleep(0.5)

    def job_states(self, job_id: str) -> str:
        """``scontrol show job`` for ``job_id`` (kept MinJobAge seconds after it ends)."""
        return self.run(["scontrol", "show", "job", job_id], cwd=self.root).stdout

    def log_tails(self) -> str:
        """The last lines of each daemon's log (its own log file, else what it printed)."""
        tails = []
        for name in ("munged", "slurmctld", "slurmd"):
            log, printed = self.root / "log" / f"{name}.log", self.root / "log" / f"{name}.out"
            has_log = log.exists() and log.stat().st_size > 0
            tails.append(_tail(log if has_log else printed))
        return "; ".join(tails)

    # -- tear-down --------------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop the daemons this cluster started (by their process ids) and
        remove its directory."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
            try:
                self.wait_idle(timeout=20)
            except (TimeoutError, subprocess.SubprocessError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(timeout: float = 60.0) -> SlurmCluster:
    """A running one-node cluster, or :class:`ClusterUnavailable` saying why not."""
    cluster = SlurmCluster()
    try:
        cluster.start(timeout)
    except BaseException:
        cluster.stop()  # whatever went wrong, leave no daemon running
        raise
    return cluster
