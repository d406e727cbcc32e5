"""A real single-node Kubernetes 1.34 on this machine, no Docker, no kind: the test control plane (etcd +
kube-apiserver, `tests.support.control_plane`) plus kube-controller-manager, kube-scheduler, kube-proxy
(iptables) and a kubelet on Debian's containerd 1.6 with runc and a CNI bridge (10.244.0.0/24), all built from
the `k8s.io/kubernetes` module by `scripts/cluster-tools.sh`. Pods really run: images come from containerd's
own store (the Shepherd image is imported from podman's once per image id; nothing is pulled).

What this sandbox needs, found by running it (a Firecracker VM, cgroup v1 + a unified hierarchy, no systemd, no
CAP_SYS_RESOURCE): the kubelet's `failCgroupV1: false` and `cgroupDriver: cgroupfs`; containerd's
`restrict_oom_score_adj` (without it runc cannot lower a sandbox's oom_score_adj and every pod fails with "can't
get final child's PID from pipe"); the apiserver reaching the kubelet by InternalIP (the node's name does not
resolve); a node IP that is not loopback (the kubelet refuses 127.0.0.1).

Run it by hand: `make cluster-up` (prints the kubeconfig) and `make cluster-down`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.local_plane import free_port
from tests.support.control_plane import ControlPlane, build_binaries

NODE_NAME = "shepherd-node"
POD_SUBNET = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"  # the bridge's address: how a pod reaches a server on this machine
PAUSE_IMAGE = "localhost/pause:3.10"
CONTAINERD_ROOT = Path(os.environ.get("SHEPHERD_CACHE", Path.home() / ".cache" / "shepherd")) / "node-containerd-1.6"
HOW_TO_GET = (
    "the node needs root, Debian's containerd, runc and conntrack (`apt-get install containerd runc conntrack "
    "containernetworking-plugins`, done by `make e2e-tools`) and Go for scripts/cluster-tools.sh"
)


def missing_prerequisites() -> str | None:
    """Why a node cannot start here, or None."""
    if os.geteuid() != 0:
        return "the node runs as root (kubelet, containerd, iptables); " + HOW_TO_GET
    for tool in ("containerd", "runc", "conntrack", "iptables", "go", "podman", "buildah"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is missing: {HOW_TO_GET}"
    if not Path("/usr/lib/cni/bridge").exists():
        return f"the CNI plugins are missing: {HOW_TO_GET}"
    return None


def node_ip() -> str:
    """This machine's address on its default route (the kubelet refuses loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing interface
        return probe.getsockname()[0]


@dataclass
class Node:
    """containerd + kubelet + the controllers and kube-proxy, joined to `plane`."""

    workdir: Path
    plane: ControlPlane
    binaries: Path
    processes: list = field(default_factory=list)
    containerd_socket: Path | None = None
    netns_before: frozenset[str] = frozenset()

    # -- start ----------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> Node:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.netns_before = pod_netns()
        self._start_containerd()
        self.import_archive(PAUSE_IMAGE, self._pause_archive())
        kubeconfig = str(self.plane.kubeconfig)
        pki = self.plane.workdir / "pki"
        common = [f"--kubeconfig={kubeconfig}", "--v=1"]
        self._spawn(
            "kube-controller-manager",
            [
                *common,
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--controllers=*,-nodeipam",  # one node, one static pod range (the CNI config)
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                *common,
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
            ],
        )
        self._spawn(
            "kube-proxy",
            [
                *common,
                f"--hostname-override={NODE_NAME}",
                "--cluster-cidr=10.244.0.0/16",
                "--proxy-mode=iptables",
                "--conntrack-max-per-core=0",  # leave the VM's conntrack sysctls alone
                f"--metrics-bind-address=127.0.0.1:{free_port()}",
                f"--healthz-bind-address=127.0.0.1:{free_port()}",
                "--nodeport-addresses=primary",
            ],
        )
        config = self._kubelet_config(pki / "ca.crt")
        self._spawn(
            "kubelet",
            [
                *common,
                f"--config={config}",
                f"--root-dir={self.workdir / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={node_ip()}",
            ],
        )
        self._wait_ready(timeout)
        return self

    def _start_containerd(self) -> None:
        state = self.workdir / "containerd"
        state.mkdir(exist_ok=True)
        CONTAINERD_ROOT.mkdir(parents=True, exist_ok=True)
        self.containerd_socket = state / "containerd.sock"
        cni = self.workdir / "cni"
        cni.mkdir(exist_ok=True)
        (cni / "10-shepherd.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "shepherd",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": "cni0",
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                }
            )
        )
        config = state / "config.toml"
        config.write_text(f'''version = 2
root = "{CONTAINERD_ROOT}"
state = "{state / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No CAP_SYS_RESOURCE here: runc may not lower a process's oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
''')
        self._spawn("containerd", ["--config", str(config)], binary="containerd")
        deadline = time.monotonic() + 30
        while not self.containerd_socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("containerd did not open its socket: " + self._tail("containerd"))
            time.sleep(0.2)

    def _kubelet_config(self, ca: Path) -> Path:
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(ca)},
                    },
                    "authorization": {"mode": "AlwaysAllow"},
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,  # this VM mounts cgroup v1 (1.34 still runs on it, with a warning)
                    "failSwapOn": False,
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "address": node_ip(),
                    "port": 10250,
                    "readOnlyPort": 0,
                    "healthzPort": 0,
                    "resolvConf": "/etc/resolv.conf",
                    # A shared test machine's disk is often over 85 %: do not evict or collect images for it.
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                        "nodefs.inodesFree": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "enforceNodeAllocatable": [],
                    "serializeImagePulls": False,
                }
            )
        )
        return config

    def _pause_archive(self) -> Path:
        return binary_image_archive(
            self.binaries / "pause", PAUSE_IMAGE, "65535:65535", CONTAINERD_ROOT / "pause-3.10.tar"
        )

    def load_image(self, reference: str) -> str:
        """Make podman's image `reference` available to pods; returns the name pods use for it. Imported into
        containerd's store (which lives beside the other caches) once per image id: a rebuilt image under the
        same tag is a new name here, so a pod never runs a stale build."""
        image_id = run_tool(["podman", "image", "inspect", "--format", "{{.Id}}", reference]).strip()
        local = f"localhost/node-image:{image_id[:16]}"
        if local not in self._images():
            archive = self.workdir / "image.tar"
            run_tool(["podman", "tag", reference, local])
            try:
                run_tool(["podman", "save", "--format", "oci-archive", "-o", str(archive), local], timeout=900)
                self.import_archive(local, archive)
            finally:
                archive.unlink(missing_ok=True)
                run_tool(["podman", "untag", reference, local])  # podman's store keeps its own names only
        return local

    def import_archive(self, reference: str, archive: Path) -> None:
        """Import an OCI archive holding `reference` into containerd's store (once)."""
        if reference in self._images():
            return
        self._ctr("images", "import", str(archive), timeout=900)
        if reference not in self._images():
            raise RuntimeError(f"containerd did not list {reference} after importing {archive}")

    def _images(self) -> set[str]:
        return set(self._ctr("images", "ls", "-q").split())

    def _ctr(self, *args: str, timeout: float = 60) -> str:
        return run_tool(["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args], timeout=timeout)

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "w")  # noqa: SIM115 (owned by the child)
        command = [binary or str(self.binaries / name), *args]
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, process))

    def _tail(self, name: str) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return " | ".join(path.read_text().strip().splitlines()[-5:]) if path.exists() else "(no log)"

    def _wait_ready(self, timeout: float) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.plane.api_client())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self._tail(name)}")
            with contextlib.suppress(client.ApiException):
                node = core.read_node(NODE_NAME)
                ready = {c.type: c.status for c in node.status.conditions or []}.get("Ready") == "True"
                # The node lifecycle controller lifts the not-ready taint once the kubelet reports Ready.
                if ready and not any(t.key == "node.kubernetes.io/not-ready" for t in node.spec.taints or []):
                    return
            time.sleep(1)
        raise RuntimeError(f"node {NODE_NAME} not Ready after {timeout:.0f} s: kubelet: {self._tail('kubelet')}")

    # -- stop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every pod's containers (a stopped kubelet leaves them running), then the processes."""
        if self.containerd_socket is not None and self.containerd_socket.exists():
            with contextlib.suppress(Exception):
                for task in self._ctr("tasks", "ls", "-q").split():
                    with contextlib.suppress(Exception):
                        self._ctr("tasks", "kill", "-s", "SIGKILL", task)
        for name, process in reversed(self.processes):
            if name == "containerd":
                time.sleep(1)  # let the shims report their tasks' exit first
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        clean_up_service_rules(self.binaries)
        delete_pod_netns(pod_netns() - self.netns_before)
        unmount_under(self.workdir)


NETNS_DIR = Path("/run/netns")


def pod_netns() -> frozenset[str]:
    """The network namespaces containerd's CNI plugin made for pod sandboxes (`cni-<uuid>`)."""
    return frozenset(p.name for p in NETNS_DIR.glob("cni-*")) if NETNS_DIR.is_dir() else frozenset()


def delete_pod_netns(names) -> None:
    """A killed containerd never calls CNI DEL for its pods, so their network namespaces (and the veths in them)
    outlive the node: delete those this node made."""
    for name in sorted(names):
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)


POD_LOGS = Path("/var/log/pods")


def container_log(pod, container: str) -> str:
    """What `container` of `pod` (a V1Pod) printed, read from the kubelet's log files on this machine. (The API
    server's pods/log is refused here: the kubelet takes no webhook authentication from it.)"""
    meta = pod.metadata
    directory = POD_LOGS / f"{meta.namespace}_{meta.name}_{meta.uid}" / container
    return "".join(path.read_text() for path in sorted(directory.glob("*.log")))


def unmount_under(directory: Path) -> None:
    """The kubelet's volume mounts and containerd's sandbox /dev/shm outlive them: unmount what is left under
    `directory`, deepest first, so the directory can be removed."""
    root = str(directory.resolve())
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    for point in sorted((p for p in points if p == root or p.startswith(root + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30, check=False)


def clean_up_service_rules(binaries: Path) -> None:
    """kube-proxy's iptables chains outlive it: remove them (what `kube-proxy --cleanup` is for)."""
    with contextlib.suppress(Exception):
        subprocess.run([str(binaries / "kube-proxy"), "--cleanup"], capture_output=True, timeout=60, check=False)


def binary_image_archive(binary: Path, reference: str, user: str, archive: Path) -> Path:
    """An image holding one static binary as its entrypoint (`/<its name>`, run as `user`), saved once as an OCI
    archive at `archive` for containerd to import."""
    if archive.exists():
        return archive
    container = run_tool(["buildah", "from", "scratch"]).strip()
    try:
        run_tool(["buildah", "copy", container, str(binary), f"/{binary.name}"])
        run_tool(["buildah", "config", "--entrypoint", f'["/{binary.name}"]', "--user", user, container])
        run_tool(["buildah", "commit", "-q", container, reference])
    finally:
        run_tool(["buildah", "rm", container])
    run_tool(["podman", "save", "--format", "oci-archive", "-o", f"{archive}.tmp", reference])
    os.replace(f"{archive}.tmp", archive)
    return archive


def run_tool(command: list[str], timeout: float = 300) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {result.stderr.strip()[-1500:]}")
    return result.stdout


# -- what tests on the node share ---------------------------------------------------------------
def wait_rolled_out(apps, name: str, namespace: str, seconds: float = 240) -> float:
    """Seconds until Deployment `name` runs its latest template on every replica, all available (it may not
    exist yet: a controller makes it)."""
    from kubernetes.client import ApiException

    started = time.monotonic()
    seen = "not created"
    while time.monotonic() < started + seconds:
        try:
            deployment = apps.read_namespaced_deployment(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        else:
            status, wanted = deployment.status, deployment.spec.replicas
            seen = status
            if (
                wanted >= 1
                and (status.observed_generation or 0) >= deployment.metadata.generation
                and status.updated_replicas == status.replicas == status.available_replicas == wanted
                and not status.unavailable_replicas
            ):
                return time.monotonic() - started
        time.sleep(1)
    raise AssertionError(
        f"Deployment {namespace}/{name} not rolled out after {seconds:.0f} s: {seen}\n{_why(apps, namespace)}"
    )


def _why(apps, namespace: str) -> str:
    """The namespace's pods' states and its latest events: what a person would look at with kubectl."""
    from kubernetes import client

    core = client.CoreV1Api(apps.api_client)
    lines = []
    for pod in core.list_namespaced_pod(namespace).items:
        states = [(s.name, s.ready, s.state.waiting or s.state.terminated) for s in pod.status.container_statuses or []]
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {states}")
    events = sorted(core.list_namespaced_event(namespace).items, key=lambda e: str(e.last_timestamp or ""))
    lines += [f"event {e.involved_object.name}: {e.reason}: {e.message}" for e in events[-8:]]
    return "\n".join(lines)


def wait_answering(url: str, seconds: float = 60) -> None:
    """Until GET `url` answers 200 (a Service's ClusterIP: its endpoints and kube-proxy's rules follow a pod's
    readiness by a few seconds)."""
    import httpx

    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.5)
    raise AssertionError(f"no answer from {url} in {seconds:.0f} s: {last}")


def answers(url: str, spec, rows, seconds: float = 60) -> dict:
    """The V1 answer of the predictor behind `url` (a Service's ClusterIP) for `rows`; retried while the
    Service's endpoints and kube-proxy's rules catch up with readiness."""
    import httpx

    from serving.traffic import instances

    deadline = time.monotonic() + seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{url}/v1/models/{spec.name}:predict", json={"instances": instances(spec, rows)}, timeout=10
            )
            if response.status_code == 200:
                return response.json()
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"no answer from {url} in {seconds:.0f} s: {last}")


# -- make cluster-up / cluster-down -------------------------------------------------------------
def up(workdir: Path) -> None:
    """Start a control plane and a node under `workdir` and leave them running (pids in workdir/pids)."""
    if reason := missing_prerequisites():
        raise SystemExit(f"error: {reason}")
    started = time.monotonic()
    plane = ControlPlane(workdir / "control-plane", build_binaries(), advertise=node_ip()).start()
    node = Node(workdir / "node", plane, build_binaries()).start()
    pids = [p.pid for _, p in plane.processes] + [p.pid for _, p in node.processes]
    (workdir / "pids").write_text(json.dumps(pids))
    (workdir / "netns-before").write_text(json.dumps(sorted(node.netns_before)))
    print(f"node {NODE_NAME} Ready in {time.monotonic() - started:.0f} s")
    print(f"export KUBECONFIG={plane.kubeconfig}")


def down(workdir: Path) -> None:
    """Stop what `up` started (pods' containers first)."""
    pids_file = workdir / "pids"
    if not pids_file.exists():
        print(f"nothing to stop under {workdir}")
        return
    socket_path = workdir / "node" / "containerd" / "containerd.sock"
    if socket_path.exists():
        tasks = subprocess.run(
            ["ctr", "-a", str(socket_path), "-n", "k8s.io", "tasks", "ls", "-q"], capture_output=True, text=True
        ).stdout.split()
        for task in tasks:
            subprocess.run(["ctr", "-a", str(socket_path), "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", task])
    for pid in reversed(json.loads(pids_file.read_text())):  # the node first, etcd last
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:  # not our child: poll until it is gone, then insist
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pids_file.unlink()
    clean_up_service_rules(build_binaries())
    before_file = workdir / "netns-before"
    if before_file.exists():
        delete_pod_netns(pod_netns() - set(json.loads(before_file.read_text())))
        before_file.unlink()
    unmount_under(workdir)
    print(f"stopped the cluster under {workdir}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # a zombie is gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".shepherd/cluster"), help="where state and logs live")
    args = parser.parse_args(argv)
    (up if args.action == "up" else down)(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
