"""The real KServe controller beside a test control plane: `cmd/manager` of KServe v0.20.0, built from its Go module
by `scripts/kserve-tools.sh`, run as a process with the admin kubeconfig (as kind or a cluster would run it as a pod,
minus the pod). Installed as KServe's own install does, from the same module's `config/`:
- the CRDs of config/crd/full the manager watches;
- the `inferenceservice-config` ConfigMap in `kserve`, with three settings changed: Standard (RawDeployment) mode by
  default, no Ingress objects (no ingress controller runs here), and Shepherd's annotations kept out of the pods
  (`kserve_inference_service_setting`, the setting helm/shepherd/README.md asks a platform team for);
- its admission webhooks (InferenceService defaulter and validator, the pod mutator, the ServingRuntime validator),
  with a `url` on this machine instead of the in-cluster Service, and a serving certificate for 127.0.0.1 signed by
  the control plane's CA (cert-manager's job in a real install).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from serving.inference_service import kserve_inference_service_setting
from serving.local_plane import free_port
from tests.support.control_plane import REPO, ControlPlane, _certificate, _key, _write_pem
from tests.support.crds import KSERVE_MODULE, KSERVE_VERSION, module_dir
from tests.support.node import binary_image_archive

NAMESPACE = "kserve"
# The webhooks Shepherd's objects pass through (KServe's config/webhook/manifests.yaml names them).
WEBHOOKS = {
    "inferenceservice.kserve-webhook-server.defaulter",
    "inferenceservice.kserve-webhook-server.validator",
    "inferenceservice.kserve-webhook-server.pod-mutator",
    "servingruntime.kserve-webhook-server.validator",
}


# KServe's agent (cmd/agent of the same module): the sidecar KServe's pod mutator adds to a predictor with a
# `logger`, which posts each request and response to the logger's URL. Built here, so a local name pods find in
# containerd without a pull.
AGENT_IMAGE = f"localhost/kserve-agent:{KSERVE_VERSION}"


def build_kserve() -> Path:
    """The directory holding KServe's controller (`manager`) and agent (`agent`) binaries, compiled on first use
    and then cached by version."""
    built = (REPO / "tools" / "kserve" / "go.mod").read_text()
    if f"github.com/kserve/kserve {KSERVE_VERSION}" not in built:
        raise RuntimeError(f"tools/kserve/go.mod and tests/support/crds.py must both name KServe {KSERVE_VERSION}")
    result = subprocess.run(
        [str(REPO / "scripts" / "kserve-tools.sh")], capture_output=True, text=True, timeout=3600, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/kserve-tools.sh failed: {result.stderr.strip()[-2000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def agent_archive(binaries: Path) -> Path:
    """The agent as an image (the static binary alone, as KServe's own image is), saved once as an OCI archive
    beside the binary for the node to import."""
    return binary_image_archive(binaries / "agent", AGENT_IMAGE, "65532:65532", binaries / "agent-image.tar")


def controller_config() -> dict:
    """KServe's own `inferenceservice-config`, set for this machine: Standard mode, no Ingress, Shepherd's
    bookkeeping annotations not copied into the pods, and the agent image built here."""
    config_map = yaml.safe_load((_config() / "configmap" / "inferenceservice.yaml").read_text())
    data = config_map["data"]
    data.pop("_example", None)
    for sidecar in ("agent", "logger"):
        data[sidecar] = json.dumps({**json.loads(data[sidecar]), "image": AGENT_IMAGE})
    deploy = json.loads(data["deploy"])
    data["deploy"] = json.dumps({**deploy, "defaultDeploymentMode": "Standard"})
    ingress = json.loads(data["ingress"])
    data["ingress"] = json.dumps({**ingress, "disableIngressCreation": True})
    inference_service = json.loads(data.get("inferenceService") or "{}")
    data["inferenceService"] = json.dumps({**inference_service, **kserve_inference_service_setting()})
    return config_map


def crds() -> list[Path]:
    """KServe's CRDs the controller watches: config/crd/full without its kustomize patches and without the LLM
    kinds (served by KServe's other controller, `cmd/llmisvc`, and 2 MB each)."""
    found = []
    for path in sorted((_config() / "crd" / "full").rglob("*.yaml")):
        if "llmisvc" in path.parts or path.name == "kustomization.yaml":
            continue
        if (yaml.safe_load(path.read_text()).get("spec") or {}).get("group"):  # a CRD, not a patch of one
            found.append(path)
    return found


def _config() -> Path:
    return module_dir(KSERVE_MODULE, KSERVE_VERSION) / "config"


@dataclass
class KServeController:
    workdir: Path
    plane: ControlPlane
    manager: Path
    process: subprocess.Popen | None = None
    webhook_port: int = 0
    registered: list = field(default_factory=list)  # (kind, name) of the webhook configurations made

    def start(self, timeout: float = 120) -> KServeController:
        from kubernetes import client

        self.workdir.mkdir(parents=True, exist_ok=True)
        api = self.plane.api_client()
        for crd in crds():
            self.plane.install_crd(crd)
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        core.create_namespaced_config_map(NAMESPACE, controller_config())
        ca_bundle = self._serving_certificate()

        self.webhook_port = free_port()
        probe_port = free_port()
        log = open(self.workdir / "manager.log", "w")  # noqa: SIM115 (owned by the child)
        self.process = subprocess.Popen(
            [
                str(self.manager),
                f"--webhook-port={self.webhook_port}",
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-addr=127.0.0.1:{probe_port}",
            ],
            env={
                **os.environ,
                "KUBECONFIG": str(self.plane.kubeconfig),
                "POD_NAMESPACE": NAMESPACE,
                "TMPDIR": str(self.workdir),  # controller-runtime reads $TMPDIR/k8s-webhook-server/serving-certs
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the KServe controller exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{probe_port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the KServe controller not ready after {timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.5)
        self._wait_webhook_server(deadline)
        self._register_webhooks(ca_bundle)
        return self

    def _wait_webhook_server(self, deadline: float) -> None:
        """Its webhook server answers TLS (the apiserver would refuse objects while it does not: failurePolicy Fail)."""
        ca = ssl.create_default_context(cafile=str(self.plane.workdir / "pki" / "ca.crt"))
        while True:
            try:
                httpx.get(f"https://127.0.0.1:{self.webhook_port}/", verify=ca, timeout=2)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"KServe's webhook server does not answer: {self.log_tail()}") from None
                time.sleep(0.5)

    def _serving_certificate(self) -> str:
        """The webhook server's certificate for 127.0.0.1, signed by the control plane's CA; returns the CA
        bundle (base64) the webhook configurations carry."""
        import base64

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        pki = self.plane.workdir / "pki"
        ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
        key = _key()
        sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = _certificate([("COMMON_NAME", "kserve-webhook-server")], ca, ca_key, key, sans=sans)
        certs = self.workdir / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True, exist_ok=True)
        _write_pem(certs / "tls.crt", cert=cert)
        _write_pem(certs / "tls.key", key=key)
        return base64.b64encode((pki / "ca.crt").read_bytes()).decode()

    def _register_webhooks(self, ca_bundle: str) -> None:
        from kubernetes import client

        admission = client.AdmissionregistrationV1Api(self.plane.api_client())
        create = {
            "MutatingWebhookConfiguration": admission.create_mutating_webhook_configuration,
            "ValidatingWebhookConfiguration": admission.create_validating_webhook_configuration,
        }
        for configuration in yaml.safe_load_all((_config() / "webhook" / "manifests.yaml").read_text()):
            if not configuration:
                continue
            ours = [w for w in configuration["webhooks"] if w["name"] in WEBHOOKS]
            if not ours:
                continue
            body = copy.deepcopy(configuration)
            body["metadata"].pop("creationTimestamp", None)
            for webhook in ours:
                path = webhook["clientConfig"]["service"]["path"]
                webhook["clientConfig"] = {"url": f"https://127.0.0.1:{self.webhook_port}{path}", "caBundle": ca_bundle}
            body["webhooks"] = ours
            create[body["kind"]](body)
            self.registered.append((body["kind"], body["metadata"]["name"]))

    def log_tail(self, lines: int = 8) -> str:
        path = self.workdir / "manager.log"
        return " | ".join(path.read_text().strip().splitlines()[-lines:]) if path.exists() else "(no log)"

    def stop(self) -> None:
        """Stop the controller and take its webhooks away (with failurePolicy Fail they would refuse every
        InferenceService, and every KServe pod, once nothing answers them)."""
        from kubernetes import client

        admission = client.AdmissionregistrationV1Api(self.plane.api_client())
        delete = {
            "MutatingWebhookConfiguration": admission.delete_mutating_webhook_configuration,
            "ValidatingWebhookConfiguration": admission.delete_validating_webhook_configuration,
        }
        for kind, name in self.registered:
            delete[kind](name)
        self.registered.clear()
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
