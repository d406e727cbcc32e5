"""A real Kubernetes control plane for tests: etcd + kube-apiserver as local processes (the envtest
pattern of controller-runtime), no kubelet, no controllers. Tests create objects and, where a
controller would, write `status` themselves.

Binaries come from `scripts/cluster-tools.sh` (built from Go modules, cached outside the repo by
version). Certificates are made here: a CA, the server's certificate for 127.0.0.1, an admin client
certificate (O=system:masters) and the service-account signing key.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from serving.local_plane import free_port

REPO = Path(__file__).resolve().parent.parent.parent
SERVICE_RANGE = "10.0.0.0/24"  # ClusterIPs; the first is the `kubernetes` Service


def build_binaries() -> Path:
    """The cache directory holding etcd and kube-apiserver (built on first use)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "cluster-tools.sh")], capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/cluster-tools.sh failed: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def _key():
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_pem(path: Path, key=None, cert=None) -> Path:
    from cryptography.hazmat.primitives import serialization

    if key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(subject: list, issuer_cert, issuer_key, key, *, ca=False, sans=None, client=False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(getattr(NameOID, k), v) for k, v in subject])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@dataclass
class ControlPlane:
    """etcd + kube-apiserver on loopback ports, with an admin kubeconfig. With `advertise` (a real node's address,
    tests.support.node) pods reach it too: the apiserver listens on every address, is the `kubernetes` Service's
    endpoint there, its certificate names that address and the Service's, and pods get ServiceAccount tokens."""

    workdir: Path
    binaries: Path
    advertise: str | None = None
    processes: list = field(default_factory=list)
    url: str = ""
    kubeconfig: Path | None = None

    def _pod_sans(self) -> list:
        from cryptography import x509

        if not self.advertise:
            return []
        service_ip = next(ipaddress.ip_network(SERVICE_RANGE).hosts())  # the `kubernetes` Service's ClusterIP
        names = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        return [
            x509.IPAddress(ipaddress.ip_address(self.advertise)),
            x509.IPAddress(service_ip),
            *(x509.DNSName(n) for n in names),
        ]

    def start(self, timeout: float = 120) -> ControlPlane:
        from cryptography import x509

        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca = _certificate([("COMMON_NAME", "shepherd-test-ca")], None, None, ca_key, ca=True)
        server_key = _key()
        server = _certificate(
            [("COMMON_NAME", "kube-apiserver")],
            ca,
            ca_key,
            server_key,
            sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"), *self._pod_sans()],
        )
        admin_key = _key()
        admin = _certificate(
            [("COMMON_NAME", "admin"), ("ORGANIZATION_NAME", "system:masters")], ca, ca_key, admin_key, client=True
        )
        sa_key = _key()
        files = {
            "ca.crt": _write_pem(pki / "ca.crt", cert=ca),
            "ca.key": _write_pem(pki / "ca.key", key=ca_key),  # signs other servers' certificates (KServe's webhooks)
            "server.crt": _write_pem(pki / "server.crt", cert=server),
            "server.key": _write_pem(pki / "server.key", key=server_key),
            "admin.crt": _write_pem(pki / "admin.crt", cert=admin),
            "admin.key": _write_pem(pki / "admin.key", key=admin_key),
            "sa.key": _write_pem(pki / "sa.key", key=sa_key),
        }
        from cryptography.hazmat.primitives import serialization

        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        self._spawn(
            "etcd",
            [
                str(self.binaries / "etcd"),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
            ],
            logs,
        )
        self.url = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--secure-port={api_port}",
                *(
                    ["--bind-address=0.0.0.0", f"--advertise-address={self.advertise}"]
                    if self.advertise
                    else ["--bind-address=127.0.0.1"]
                ),
                f"--tls-cert-file={files['server.crt']}",
                f"--tls-private-key-file={files['server.key']}",
                f"--client-ca-file={files['ca.crt']}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--allow-privileged=true",
                # A real node (tests.support.node) is reached by its address: its name does not resolve here.
                "--kubelet-preferred-address-types=InternalIP",
                # Without controllers no ServiceAccount exists, and the plugin would refuse every pod.
                *([] if self.advertise else ["--disable-admission-plugins=ServiceAccount"]),
                "--authorization-mode=RBAC",
                f"--service-account-issuer=https://127.0.0.1:{api_port}/",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={files['sa.key']}",
            ],
            logs,
        )
        deadline = time.monotonic() + timeout
        tls = ssl.create_default_context(cafile=str(files["ca.crt"]))
        tls.load_cert_chain(str(files["admin.crt"]), str(files["admin.key"]))
        while time.monotonic() < deadline:
            for name, process in self.processes:
                if process.poll() is not None:
                    tail = (logs / f"{name}.log").read_text().strip().splitlines()[-5:]
                    raise RuntimeError(f"{name} exited: " + " | ".join(tail))
            try:
                response = httpx.get(f"{self.url}/readyz", verify=tls, timeout=2)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f} s")
        self.kubeconfig = self.workdir / "kubeconfig"
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: "{self.url}", certificate-authority: "{files["ca.crt"]}"}}
users:
- name: admin
  user: {{client-certificate: "{files["admin.crt"]}", client-key: "{files["admin.key"]}"}}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
""")
        return self

    def _spawn(self, name: str, command: list[str], logs: Path) -> None:
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (owned by the child)
        self.processes.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)))

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    def install_crd(self, path: Path) -> None:
        """Create a CRD (client-side create: server-side apply of a 2 MB CRD is not needed here) and
        wait until it is Established. One already there (another test's fixture installed it) is kept."""
        import yaml
        from kubernetes import client
        from kubernetes.client import ApiException

        body = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        api = client.ApiextensionsV1Api(self.api_client())
        try:
            api.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            crd = api.read_custom_resource_definition(body["metadata"]["name"])
            if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
                return
            time.sleep(0.3)
        raise RuntimeError(f"CRD {body['metadata']['name']} not established")
