"""A real single-node SLURM cluster on 127.0.0.1 for the tests: Debian's slurmctld, slurmd and munge.

``python tests/slurm_cluster.py install`` installs the Debian packages where they are missing and
this is root with apt-get (`make test` runs it);
tests/slurm_runs.py calls :func:`start` when the test session starts and :func:`stop` when it ends.
By hand: ``python tests/slurm_cluster.py start DIR`` starts munged, slurmctld and slurmd in the
background and waits until ``sinfo`` shows the node idle; ``python tests/slurm_cluster.py stop DIR``
stops them by the PIDs written to ``DIR/pids``.

The cluster: one node (all CPUs of this machine, 90 % of its memory) in one partition ``cpu``,
``proctrack/linuxproc``, ``task/none``, ``select/cons_tres`` with cores and memory consumable, no
accounting (``accounting_storage/none``; ``sacct`` then fails, so Snakemake runs need
``--slurm-status-command squeue``), ``MinJobAge`` 3600 s (the tests read the finished jobs from
``squeue`` minutes after their run, which went on in the background, has ended). munged uses its own
key and socket in DIR. The config must be ``/etc/slurm/slurm.conf``: the jobstep executor plugin clears
``SLURM_CONF`` inside jobs, so the ``srun`` there reads the default path. An existing
``/etc/slurm/slurm.conf`` that this module did not write is never touched: :func:`start` refuses.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by cinderseg tests/slurm_cluster.py"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo"]
PARTITION = "cpu"
NODE = "cinderseg-node"
CTLD_PORT = 6817
SLURMD_PORT = 6818
MIN_JOB_AGE_S = 3600


class ClusterError(RuntimeError):
    """SLURM could not be installed or started."""


@dataclass
class Cluster:
    """A running cluster: its state directory, daemon PIDs, CPUs and memory of its node."""

    root: Path
    cpus: int
    memory_mb: int
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM client commands (the config is at the default path)."""
        env = dict(os.environ)
        env.pop("SLURM_CONF", None)
        return env


def missing_commands() -> list[str]:
    """The SLURM and munge binaries not on PATH (sbin included)."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [name for name in DAEMONS if shutil.which(name, path=path) is None]


def can_install() -> bool:
    """Whether the Debian packages can be installed here: root and apt-get."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install() -> None:
    """Install Debian's slurmctld, slurmd, slurm-client and munge (without starting any service)."""
    if not missing_commands():
        return
    if not can_install():
        raise ClusterError("installing SLURM needs root and apt-get (Debian/Ubuntu)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env
    )
    if missing_commands():
        raise ClusterError(f"after installing {PACKAGES}, still missing: {missing_commands()}")


def node_size() -> tuple[int, int]:
    """CPUs usable by this process and 90 % of the machine's memory in MB: the node's size."""
    cpus = len(os.sched_getaffinity(0))
    total_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return cpus, int(total_kb / 1024 * 0.9)


def slurm_conf(root: Path, cpus: int, memory_mb: int) -> str:
    """The single-node slurm.conf: controller and node on 127.0.0.1, no accounting."""
    host = socket.gethostname().split(".")[0]  # slurmctld compares its short host name
    return f"""{MARKER}: a single-node test cluster, state in {root}
ClusterName=cinderseg
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge={MIN_JOB_AGE_S}
SlurmctldTimeout=60
SlurmdTimeout=300
NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _check_ports_free() -> None:
    for port in (CTLD_PORT, SLURMD_PORT):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise ClusterError(f"port {port} on 127.0.0.1 is in use: is another SLURM running?")


def _write_munge(root: Path) -> list[str]:
    """munged's key, directories and command line (own socket and key, foreground)."""
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    return [
        "munged",
        "--foreground",
        "--force",
        f"--socket={munge}/munge.socket",
        f"--key-file={key}",
        f"--log-file={munge}/munged.log",
        f"--pid-file={munge}/munged.pid",
        f"--seed-file={munge}/munged.seed",
    ]


def _wait_for(what: str, check, timeout_s: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name, pid in cluster.pids.items():
            if not _alive(pid):
                raise ClusterError(f"{name} exited while waiting for {what}; logs: {cluster.root}")
        if check():
            return
        time.sleep(0.5)
    raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs: {cluster.root}")


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (stop from another process): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)
    return done == 0


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def node_state(cluster: Cluster) -> str:
    """The node's state as sinfo prints it ('' if sinfo fails)."""
    proc = subprocess.run(
        ["sinfo", "--noheader", "--node", NODE, "--format=%T"],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=30,
    )
    return proc.stdout.strip() if proc.returncode == 0 else ""


def start(root: Path, timeout_s: float = 120) -> Cluster:
    """Write the config, start munged, slurmctld and slurmd in the background; wait for an idle node."""
    if missing_commands():
        raise ClusterError(f"SLURM is not installed (missing {missing_commands()}); run `make test` as root")
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        raise ClusterError(f"{SLURM_CONF} exists and was not written by these tests: not touching it")
    _check_ports_free()
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    cpus, memory_mb = node_size()
    cluster = Cluster(root=root, cpus=cpus, memory_mb=memory_mb)
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(slurm_conf(root, cpus, memory_mb))
    commands = {
        "munged": _write_munge(root),
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(SLURM_CONF)],
        "slurmd": ["slurmd", "-D", "-N", NODE, "-f", str(SLURM_CONF)],
    }
    env = dict(cluster.env, PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    try:
        for name, cmd in commands.items():
            with open(root / f"{name}.out", "wb") as out:
                proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            cluster.pids[name] = proc.pid
            (root / "pids").write_text("".join(f"{n} {p}\n" for n, p in cluster.pids.items()))
            if name == "munged":
                _wait_for("munged's socket", (root / "munge" / "munge.socket").exists, 30, cluster)
            elif name == "slurmctld":
                _wait_for("slurmctld", lambda: _port_open(CTLD_PORT), 60, cluster)
        _wait_for("the node to be idle in sinfo", lambda: node_state(cluster) == "idle", timeout_s, cluster)
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop(cluster: Cluster, timeout_s: float = 30) -> None:
    """Cancel leftover jobs, stop the daemons by PID (TERM, then KILL) and remove the config."""
    if cluster.pids.get("slurmctld") and _alive(cluster.pids["slurmctld"]):
        # Cancel what is left and wait until the jobs' processes (slurmstepd) have ended.
        subprocess.run(
            ["scancel", "--full", "--user", "root"], capture_output=True, env=cluster.env, timeout=30
        )
        deadline = time.monotonic() + timeout_s
        while _active_jobs(cluster) and time.monotonic() < deadline:
            time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = cluster.pids.get(name)
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.1)
    if SLURM_CONF.exists() and f"{MARKER}: a single-node test cluster, state in {cluster.root}\n" in (
        SLURM_CONF.read_text()
    ):  # this cluster's config, not that of another test session's cluster
        SLURM_CONF.unlink()


def _active_jobs(cluster: Cluster) -> list[str]:
    """Ids of the jobs not yet finished (pending, running, completing)."""
    proc = subprocess.run(
        ["squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED"],
        capture_output=True,
        text=True,
        env=cluster.env,
        timeout=30,
    )
    return proc.stdout.split() if proc.returncode == 0 else []


def from_pids(root: Path) -> Cluster:
    """The cluster whose state directory is ``root``, from the daemons' PIDs that :func:`start` wrote."""
    pids = dict(line.split() for line in (root / "pids").read_text().splitlines())
    cpus, memory_mb = node_size()
    return Cluster(
        root=root.resolve(), cpus=cpus, memory_mb=memory_mb, pids={n: int(p) for n, p in pids.items()}
    )


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        try:
            install()
        except (ClusterError, subprocess.CalledProcessError) as err:
            print(f"slurm_cluster: could not install SLURM: {err}", file=sys.stderr)
            if os.environ.get("CI", "").lower() == "true":
                return 1
            print("note: tests/test_slurm.py will skip (under CI=true they fail)", file=sys.stderr)
        return 0
    if len(argv) == 2 and argv[0] == "start":
        cluster = start(Path(argv[1]))
        print(f"SLURM up: node {NODE} ({cluster.cpus} CPUs, {cluster.memory_mb} MB), PIDs {cluster.pids}")
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        stop(from_pids(Path(argv[1])))
        return 0
    print("usage: python tests/slurm_cluster.py install | start DIR | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
