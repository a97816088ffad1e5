"""Throw-away PKI for the test control plane, made with the openssl CLI.

The openssl binary is on every machine the tests run on, so the rig needs no
extra Python package. Keys are EC P-256 (fast to generate) except the
service-account signing key, which is RSA because every API server version
accepts RS256 for service-account tokens.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# Cluster IP of the `kubernetes` Service: the first address of the service range.
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"
DAYS = "3650"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl(
        "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent
    )


def make_ca(directory: Path) -> KeyPair:
    """A self-signed CA that signs every other certificate of the rig."""
    pair = KeyPair(directory / "ca.crt", directory / "ca.key")
    _ec_key(pair.key)
    _openssl(
        "req", "-x509", "-new", "-key", str(pair.key), "-out", str(pair.cert),
        "-days", DAYS, "-subj", "/CN=kubeslim-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        cwd=directory,
    )  # fmt: skip
    return pair


def issue(
    ca: KeyPair,
    name: str,
    common_name: str,
    *,
    organization: str | None = None,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
) -> KeyPair:
    """Sign a leaf certificate; with names or IPs it also serves TLS.

    Kubernetes reads the user from CN and the groups from O, so a client
    certificate's subject is its identity.
    """
    directory = ca.cert.parent
    pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    _ec_key(pair.key)
    subject = (
        f"/CN={common_name}" if organization is None else f"/O={organization}/CN={common_name}"
    )
    _openssl(
        "req", "-new", "-key", str(pair.key), "-out", str(csr), "-subj", subject, cwd=directory
    )
    usages = "clientAuth"
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature"]
    sans = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
    if sans:
        usages = "serverAuth,clientAuth"
        lines.append("subjectAltName=" + ",".join(sans))
    lines.append(f"extendedKeyUsage={usages}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", str(pair.cert), "-days", DAYS, "-extfile", str(ext),
        cwd=directory,
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    return pair


def make_service_account_key(directory: Path) -> KeyPair:
    """RSA key that signs service-account tokens; `cert` holds the public key."""
    key = directory / "sa.key"
    pub = directory / "sa.pub"
    _openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        str(key),
        cwd=directory,
    )
    _openssl("pkey", "-in", str(key), "-pubout", "-out", str(pub), cwd=directory)
    return KeyPair(pub, key)


@dataclass(frozen=True)
class Pki:
    """Every certificate and key the rig's components use."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    apiserver_kubelet_client: KeyPair
    kubelet_serving: KeyPair
    service_account: KeyPair


def make_pki(directory: Path, node_ips: tuple[str, ...] = ()) -> Pki:
    """Generate the rig's PKI under `directory` (created if needed); the API
    server and kubelet also serve on `node_ips` (a real node's address)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory)
    apiserver_names = (
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    return Pki(
        ca=ca,
        apiserver=issue(
            ca, "apiserver", "kube-apiserver",
            server_names=apiserver_names,
            server_ips=("127.0.0.1", KUBERNETES_SERVICE_IP, *node_ips),
        ),
        # system:masters bypasses RBAC: the tests' own admin identity.
        admin=issue(ca, "admin", "kubeslim-test-admin", organization="system:masters"),
        # The bootstrap RBAC policy binds this user to what the controller manager needs.
        controller_manager=issue(ca, "controller-manager", "system:kube-controller-manager"),
        apiserver_kubelet_client=issue(
            ca, "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
            organization="system:masters",
        ),
        kubelet_serving=issue(
            ca, "kubelet-serving", "kubelet",
            server_names=("localhost",), server_ips=("127.0.0.1", *node_ips),
        ),
        service_account=make_service_account_key(directory),
    )  # fmt: skip
