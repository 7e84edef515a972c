"""A private Docker engine for the compose end-to-end test, and the image inputs it needs.

Layout of the state folder (``MB_COMPOSE_STATE``, default ``<project>/.compose``; kept between runs as a
cache, ``rm -rf`` it for a run from scratch):

    base-bookworm.tar   the debootstrap'd Debian root file system, imported as the base image
    wheelhouse/         the pinned artifacts of requirements*.lock (pip download --require-hashes)
    hadoop/             Hadoop's jars (Maven Central) and the compiled launcher of local_platform/hadoop.py
    docker/             dockerd's --data-root: the images and their layer cache (a second build is seconds)
    run/                exec root, socket, pid file, daemon log, the test's config and env: removed at stop

dockerd runs with host networking only (``--bridge=none``, no iptables, no forwarding): this workplace
allows loopback traffic only, and every compose service runs with ``network_mode: host``.
Everything here is bounded: each wait has a timeout and fails with what the daemon said.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "mediation-backup/base:bookworm"


class EngineError(RuntimeError):
    """The engine or an image input could not be made; the message carries the tool's own output."""


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no log)"


def run(argv: list[str], timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    """Run ``argv`` (never a shell), failing with its output when it fails or outlives ``timeout``."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise EngineError(f"{what}: timed out after {timeout:.0f}s\n{(e.stderr or '')[-3000:]}") from None
    if proc.returncode != 0:
        raise EngineError(f"{what}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def debian_mirror() -> str:
    """The Debian mirror apt on this host uses for bookworm (deb822 .sources or one-line sources.list)."""
    files = sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and "bookworm" in suites.group(1).split():
                return uris.group(1)
        m = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M)
        if m:
            return m.group(1)
    raise EngineError("no Debian bookworm mirror in /etc/apt/sources.list(.d): debootstrap needs one")


class Engine:
    """dockerd under ``state``, started and stopped by pid; the client talks to its own socket only.

    CPU share: dockerd with the cgroupfs driver and no systemd (as here) puts every container under one
    cgroup (/docker) whose cpu.shares is 1024, the weight of a single host thread: beside a busy test
    session the whole stack got a quarter of one core and a JVM 1 to 3 % (HDFS took minutes to start).
    The engine's containers go under a cgroup of their own (``--cgroup-parent``) weighing ``containers``
    host threads, each container as much as one process: what Docker under systemd gives (a scope per
    container).  Removed at stop.
    While the images are made (``start`` until ``images_made``), that cgroup weighs ``build_threads`` host threads and
    holds this process too, so everything it starts (debootstrap, pip, dockerd and the build steps it runs) shares
    that weight: in a fresh-clone run like CI the build's many busy processes beside the test session, each weighing
    a host thread, saturated both cores for its first minutes (a 60-row count load took 82 s, ten times its time
    on a quiet machine), while the build itself is in no hurry (it ends long before the session).  The stack then
    gets its full weight before ``up`` (``images_made``): at the weight of one thread, the stack's JVMs took minutes
    to start."""

    def __init__(self, state: Path, containers: int = 1, build_threads: int = 1):
        self.state = state.resolve()
        self.cgroup = "mb-compose-" + hashlib.sha256(str(self.state).encode()).hexdigest()[:10]
        self.containers, self.build_threads = containers, build_threads
        self.joined: Path | None = None  # the cgroup this process was moved into, left again at stop
        self.run_dir = self.state / "run"
        self.sock = self.run_dir / "docker.sock"
        self.pidfile = self.run_dir / "dockerd.pid"
        self.log = self.run_dir / "dockerd.log"
        # A client config of its own: no credentials or contexts of the machine's user, and the
        # `docker compose` plugin (deploy/docker-compose-plugin: Debian's docker-compose behind the
        # docker CLI's plugin interface).
        self.docker_config = self.state / "docker-config"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}", DOCKER_CONFIG=str(self.docker_config))
        self.env.pop("DOCKER_CONTEXT", None)
        self.client = shutil.which("docker", path="/usr/bin") or shutil.which("docker")
        self.proc: subprocess.Popen | None = None

    # -- daemon --------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """Start dockerd and wait until ``docker info`` answers; fail with the daemon's log otherwise."""
        dockerd = shutil.which("dockerd")
        if os.geteuid() != 0:
            raise EngineError("the compose test starts its own dockerd and needs root "
                              "(make test COMPOSE_TEST=no excludes it)")
        if not dockerd or not self.client:
            raise EngineError("dockerd/docker not found: make compose-deps installs Debian's docker.io")
        self.stop()  # a previous run killed hard may have left its daemon or mounts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        plugins = self.docker_config / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(__file__).resolve().parents[2] / "deploy" / "docker-compose-plugin", plugins / "docker-compose")
        self.cpu_share = self._make_cgroup(self.build_threads)
        self._join_cgroup()
        argv = [dockerd, "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-forward=false",
                "--ip-masq=false", "--data-root", str(self.state / "docker"), "--exec-root", str(self.run_dir / "exec"),
                "--pidfile", str(self.pidfile), "-H", f"unix://{self.sock}", f"--cgroup-parent=/{self.cgroup}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited with code {self.proc.returncode}:\n{_tail(self.log)}")
            if self.sock.exists() and subprocess.run([self.client, "info"], env=self.env, capture_output=True,
                                                     timeout=10).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise EngineError(f"dockerd did not answer `docker info` within {timeout:.0f}s:\n{_tail(self.log)}")
            time.sleep(0.2)

    def stop(self, timeout: float = 30) -> None:
        """Stop dockerd by its pid (TERM, then KILL), unmount what it left, remove ``run/``."""
        pid = self.proc.pid if self.proc else None
        if pid is None and self.pidfile.exists():
            try:
                pid = int(self.pidfile.read_text().strip())
                if Path(f"/proc/{pid}/exe").resolve().name != "dockerd":
                    pid = None  # a stale pid file naming someone else's process
            except (ValueError, OSError):
                pid = None
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    if self.proc is not None and self.proc.poll() is not None:
                        break
                    time.sleep(0.1)
                else:
                    if Path(f"/proc/{pid}").exists():
                        os.kill(pid, signal.SIGKILL)
                        if self.proc is not None:
                            self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.proc = None
        # Deepest first: netns/default under exec, overlay mounts of containers killed with the daemon.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(str(self.state) + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self._leave_cgroup()
        self._remove_cgroups()

    def _cpu_root(self) -> tuple[Path, str] | None:
        """(root of the hierarchy with the cpu controller, its weight file name), or None without one."""
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.shares").exists():
            return v1, "cpu.shares"
        unified = Path("/sys/fs/cgroup")
        control = unified / "cgroup.subtree_control"
        if control.exists() and "cpu" in control.read_text().split():
            return unified, "cpu.weight"
        return None

    def _make_cgroup(self, threads: int) -> str:
        """The containers' parent cgroup, weighing ``threads`` host threads; what was set."""
        found = self._cpu_root()
        if found is None:
            return "default (no cpu controller found)"
        (found[0] / self.cgroup).mkdir(exist_ok=True)
        return self.weigh(threads)

    def weigh(self, threads: int) -> str:
        """Give the engine's cgroup (this process while joined, dockerd, builds, containers) the CPU weight of
        ``threads`` host threads; what was set."""
        found = self._cpu_root()
        if found is None or not (found[0] / self.cgroup).is_dir():
            return "default (no cpu controller found)"
        root, name = found
        value = 1024 * threads if name == "cpu.shares" else min(10000, 100 * threads)
        (root / self.cgroup / name).write_text(str(value))
        return f"cgroup {'v1' if name == 'cpu.shares' else 'v2'} {name} {value}"

    def _join_cgroup(self) -> None:
        """Move this process into the leaf ``session`` of the engine's cgroup: what it starts from now on shares the
        engine's weight.  On cgroup v2 the parent then hands the cpu controller down (a cgroup with controllers
        enabled for its children holds no process itself: hence the leaf).  Not possible: logged, nothing moved."""
        found = self._cpu_root()
        if found is None:
            return
        root, name = found
        leaf = root / self.cgroup / "session"
        try:
            leaf.mkdir(exist_ok=True)
            if name == "cpu.weight":
                (root / self.cgroup / "cgroup.subtree_control").write_text("+cpu")
            (leaf / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:
            print(f"compose test: could not join the engine's cgroup {leaf} ({e}): the image build keeps the "
                  f"weight of its own processes", file=sys.stderr)
            return
        self.joined = leaf

    def images_made(self) -> str:
        """The build is over: this process and every one it started meanwhile (dockerd, containerd) back in the root
        cgroup, each weighing a host thread as before, and the engine's cgroup, now the containers', weighing
        ``containers`` threads; what was set.  Why not leave dockerd in the session leaf: it would share the
        containers' weight with them, and every call of the test to the daemon would wait on the stack's load."""
        self._leave_cgroup()
        return self.weigh(self.containers)

    def _leave_cgroup(self) -> None:
        """Move every process of the ``session`` leaf (this one, what it started) back to the root cgroup."""
        if self.joined is None:
            return
        root_procs = self.joined.parent.parent / "cgroup.procs"
        try:
            pids = (self.joined / "cgroup.procs").read_text().split()
        except OSError as e:
            pids = [str(os.getpid())]
            print(f"compose test: could not list the cgroup {self.joined} ({e})", file=sys.stderr)
        for pid in pids:
            try:
                root_procs.write_text(pid)
            except ProcessLookupError:  # it ended meanwhile
                pass
            except OSError as e:
                print(f"compose test: could not move pid {pid} out of the cgroup {self.joined} ({e})", file=sys.stderr)
        self.joined = None

    def in_cgroup(self) -> bool:
        """Whether this process is in the engine's cgroup now (read from /proc/self/cgroup)."""
        return any(line.split(":", 2)[2].startswith(f"/{self.cgroup}/")
                   for line in Path("/proc/self/cgroup").read_text().splitlines() if line.count(":") >= 2)

    def _remove_cgroups(self) -> None:
        """The parent cgroups dockerd and _make_cgroup made (empty once every container is gone)."""
        for controller in Path("/sys/fs/cgroup").iterdir():
            group = controller / self.cgroup if controller.name != self.cgroup else controller
            if group.is_dir() and group.name == self.cgroup:
                for child in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    try:
                        child.rmdir()
                    except OSError:
                        pass
                try:
                    group.rmdir()
                except OSError:
                    pass

    # -- client --------------------------------------------------------------------
    def docker(self, *args: str, timeout: float = 120, what: str | None = None, **kw) -> subprocess.CompletedProcess:
        return run([self.client, *args], timeout, what or f"docker {' '.join(args[:3])}", env=self.env, **kw)

    def has_image(self, name: str) -> bool:
        return subprocess.run([self.client, "image", "inspect", name], env=self.env, capture_output=True,
                              timeout=30).returncode == 0

    # -- image inputs ----------------------------------------------------------------
    def ensure_base_image(self, timeout: float = 900) -> str:
        """The local Debian base image: debootstrap once (cached as a tarball), ``docker import`` it."""
        if self.has_image(BASE_IMAGE):
            return "cached image"
        tarball = self.state / "base-bookworm.tar"
        how = "cached tarball"
        if not tarball.exists():
            debootstrap = shutil.which("debootstrap")
            if not debootstrap:
                raise EngineError("debootstrap not found: make compose-deps installs it")
            rootfs = self.state / "rootfs"
            shutil.rmtree(rootfs, ignore_errors=True)
            run([debootstrap, "--variant=minbase", "bookworm", str(rootfs), debian_mirror()], timeout,
                "debootstrap bookworm")
            partial = tarball.with_suffix(".partial")
            with open(partial, "wb") as out:
                subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=out, check=True,
                               timeout=timeout)
            partial.rename(tarball)
            shutil.rmtree(rootfs)
            how = "debootstrap"
        with open(tarball, "rb") as f:
            self.docker("import", "-", BASE_IMAGE, stdin=f, timeout=timeout, what="docker import of the base image")
        return how

    def wheelhouse(self) -> Path:
        return self.state / "wheelhouse"

    def hadoop_jars(self) -> Path:
        return self.state / "hadoop"


def ensure_hadoop_jars(folder: Path) -> str:
    """Hadoop's jars and the launcher the tryout image runs HDFS and YARN with, fetched on the host (Maven)."""
    from config.settings import PlatformSettings
    from local_platform.hadoop import LocalHadoop

    hadoop = LocalHadoop(PlatformSettings(), folder, folder)
    if hadoop.installed():
        return "cached"
    hadoop.ensure_installed()
    return "fetched"
