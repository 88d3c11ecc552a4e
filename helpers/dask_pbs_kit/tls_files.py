"""Per-job TLS credentials: a fresh CA, a certificate for the cluster, one for clients.

Made with the `openssl` command when there is one, else with the `cryptography`
package. The CA's private key is deleted as soon as the two certificates are signed:
nobody, the job included, can issue another certificate that the cluster trusts.
Every file is the owner's only (folder 0700, files 0600).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess

from .errors import NO_TLS_TOOL, KitError

CA = "ca.pem"
CLUSTER_CERT, CLUSTER_KEY = "cluster.pem", "cluster.key"
CLIENT_CERT, CLIENT_KEY = "client.pem", "client.key"
CLIENT_CONFIG = "client-config.json"

# The extensions that Python 3.13's strict verification (VERIFY_X509_STRICT) asks for.
OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = dask-pbs-kit
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:dask-pbs-kit
"""
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def create(folder: str, label: str, days: int = 31, backend: str = "auto") -> dict:
    """Make the job's credentials in folder (created 0700); return the client config."""
    label = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:40]  # goes into openssl's -subj
    if backend == "auto":
        backend = "openssl" if shutil.which("openssl") else "cryptography"
    if backend == "cryptography" and not _has_cryptography():
        raise KitError(
            "cannot make the job's TLS certificates: this node has neither the openssl "
            "command nor the Python cryptography package (load or install one, e.g. "
            "`module load openssl` or `pip install cryptography`, or set TLS=no to run "
            "without encryption: then anyone who can reach the node can use your cluster)",
            NO_TLS_TOOL)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise KitError(f"cannot create the TLS folder {folder} ({exc.strerror}): set LOG_DIR "
                       "to a folder you can write on shared storage") from None
    old_umask = os.umask(0o077)
    try:
        if backend == "openssl":
            _with_openssl(folder, label, days)
        elif backend == "cryptography":
            _with_cryptography(folder, label, days)
        else:
            raise KitError(f"unknown TLS backend {backend!r} (auto, openssl or cryptography)")
        config = client_config(folder)
        with open(os.path.join(folder, CLIENT_CONFIG), "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
            fh.write("\n")
    finally:
        os.umask(old_umask)
    return config


def client_config(folder: str) -> dict:
    """What a client needs, as a Dask configuration (JSON is YAML: Dask reads it too)."""
    path = os.path.abspath(folder)
    return {"distributed": {"comm": {
        "require-encryption": True,
        "tls": {
            "ca-file": os.path.join(path, CA),
            "client": {"cert": os.path.join(path, CLIENT_CERT),
                       "key": os.path.join(path, CLIENT_KEY)},
        },
    }}}


def _has_cryptography() -> bool:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return False
    return True


def _openssl(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(["openssl", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(*procs: subprocess.Popen) -> list:
    """Wait for openssl runs; the error text of each that failed."""
    return [err.strip() for proc in procs
            for _, err in [proc.communicate()] if proc.returncode != 0]


def _fail(errors: list) -> None:
    if errors:
        raise KitError("openssl failed making the job's TLS certificates:\n"
                       + "\n".join(errors) + "\n(set TLS=no to run without encryption)")


def _with_openssl(folder: str, label: str, days: int) -> None:
    join = lambda name: os.path.join(folder, name)  # noqa: E731
    config, ca_key = join("openssl.cnf"), join("ca.key")
    leaves = ((CLUSTER_CERT, CLUSTER_KEY, "cluster"), (CLIENT_CERT, CLIENT_KEY, "client"))
    with open(config, "w", encoding="utf-8") as fh:
        fh.write(OPENSSL_CONFIG)
    try:
        _fail(_finish(_openssl(
            "req", "-x509", "-config", config, "-extensions", "ca_ext", *EC_KEY,
            "-keyout", ca_key, "-out", join(CA), "-days", str(days),
            "-subj", f"/CN=dask-pbs-kit CA of {label}")))
        # OpenSSL 3: key, request and signature in one run per leaf, both at once.
        errors = _finish(*[_openssl(
            "req", "-x509", "-config", config, "-extensions", "leaf_ext", "-CA", join(CA),
            "-CAkey", ca_key, *EC_KEY, "-keyout", join(key), "-out", join(cert),
            "-days", str(days), "-set_serial", f"0x{secrets.token_hex(16)}",
            "-subj", f"/CN=dask-pbs-kit {role} of {label}") for cert, key, role in leaves])
        if errors:  # OpenSSL 1.1 has no `req -CA`: a request, then its signature
            for cert, key, role in leaves:
                csr = join(role + ".csr")
                _fail(_finish(_openssl(
                    "req", "-new", "-config", config, *EC_KEY, "-keyout", join(key),
                    "-out", csr, "-subj", f"/CN=dask-pbs-kit {role} of {label}")))
                _fail(_finish(_openssl(
                    "x509", "-req", "-in", csr, "-CA", join(CA), "-CAkey", ca_key,
                    "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days),
                    "-extfile", config, "-extensions", "leaf_ext", "-out", join(cert))))
                os.remove(csr)
    finally:
        for leftover in (ca_key, config):
            if os.path.exists(leftover):
                os.remove(leftover)


def _with_cryptography(folder: str, label: str, days: int) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # An hour back: a node whose clock lags the first node's still accepts the certificates.
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def usage(ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not ca, key_encipherment=not ca,
                             key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                             data_encipherment=False, key_agreement=False,
                             encipher_only=False, decipher_only=False)

    def write(filename: str, data: bytes) -> None:
        fd = os.open(os.path.join(folder, filename), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"dask-pbs-kit CA of {label}")
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(ca=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    write(CA, ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_file, key_file, role in ((CLUSTER_CERT, CLUSTER_KEY, "cluster"),
                                      (CLIENT_CERT, CLIENT_KEY, "client")):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(f"dask-pbs-kit {role} of {label}"))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("dask-pbs-kit")]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        write(key_file, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
