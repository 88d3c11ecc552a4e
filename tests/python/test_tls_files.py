"""The job's TLS credentials: both makers, private files, a real TLS handshake."""
from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import threading

import pytest

from dask_pbs_kit import kit_cli, tls_files
from dask_pbs_kit.errors import NO_TLS_TOOL, KitError

BACKENDS = ["openssl", "cryptography"]


def context(folder, cert: str, key: str, purpose) -> ssl.SSLContext:
    """A context built the way distributed.Security builds it, plus Python 3.13's strictness."""
    ctx = ssl.create_default_context(purpose=purpose, cafile=os.path.join(folder, "ca.pem"))
    ctx.load_cert_chain(os.path.join(folder, cert), os.path.join(folder, key))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= getattr(ssl, "VERIFY_X509_STRICT", 0)
    return ctx


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> bytes:
    """Send a byte over TLS through a socket pair; return what the server read."""
    a, b = socket.socketpair()
    got: list = []
    errors: list = []

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                got.append(s.recv(1))
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b) as c:
            c.sendall(b"x")
            c.recv(1)  # the server closing (or refusing) ends this
    except (ssl.SSLError, OSError) as exc:
        errors.append(exc)
    finally:
        thread.join(10)
        a.close()
        b.close()
    if errors and not got:
        raise ssl.SSLError(str(errors[0]))
    return got[0]


@pytest.fixture(params=BACKENDS)
def made(request, tmp_path):
    folder = tmp_path / "tls"
    config = tls_files.create(str(folder), "12.fakepbs", days=2, backend=request.param)
    return folder, config


def test_files_are_private_and_the_ca_key_is_gone(made):
    folder, config = made
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["ca.pem", "client-config.json", "client.key", "client.pem", "cluster.key", "cluster.pem"]
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_client_config_is_a_dask_configuration_naming_the_files(made):
    folder, config = made
    assert json.loads((folder / "client-config.json").read_text()) == config
    comm = config["distributed"]["comm"]
    assert comm["require-encryption"] is True
    assert comm["tls"]["ca-file"] == str(folder / "ca.pem")
    assert comm["tls"]["client"] == {"cert": str(folder / "client.pem"), "key": str(folder / "client.key")}


def test_cluster_and_client_certificates_complete_a_mutual_handshake(made):
    folder, _ = made
    server = context(folder, "cluster.pem", "cluster.key", ssl.Purpose.CLIENT_AUTH)
    client = context(folder, "client.pem", "client.key", ssl.Purpose.SERVER_AUTH)
    assert handshake(server, client) == b"x"
    # Workers present the cluster certificate to each other, as clients too.
    peer = context(folder, "cluster.pem", "cluster.key", ssl.Purpose.SERVER_AUTH)
    assert handshake(server, peer) == b"x"


def test_a_certificate_from_another_jobs_ca_is_refused(made, tmp_path):
    folder, _ = made
    other = tmp_path / "other"
    tls_files.create(str(other), "13.fakepbs", days=2)
    server = context(folder, "cluster.pem", "cluster.key", ssl.Purpose.CLIENT_AUTH)
    # The intruder trusts this job's CA (it is not secret) but holds its own certificate.
    intruder = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    intruder.check_hostname = False
    intruder.load_cert_chain(str(other / "client.pem"), str(other / "client.key"))
    with pytest.raises(ssl.SSLError):
        handshake(server, intruder)
    # A client with no certificate at all.
    bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    bare.check_hostname = False
    with pytest.raises(ssl.SSLError):
        handshake(server, bare)


def test_neither_openssl_nor_cryptography_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(tls_files.shutil, "which", lambda name: None)
    monkeypatch.setattr(tls_files, "_has_cryptography", lambda: False)
    with pytest.raises(KitError) as err:
        tls_files.create(str(tmp_path / "tls"), "1.x")
    assert err.value.code == NO_TLS_TOOL
    assert "openssl" in str(err.value) and "TLS=no" in str(err.value)
    assert not (tmp_path / "tls").exists()


def test_kit_tls_command_sets_validity_from_the_walltime(tmp_path, capsys):
    folder = tmp_path / "tls"
    assert kit_cli.main(["tls", str(folder), "--name", "7.server/x y", "--walltime", "90000"]) == 0
    text = ssl._ssl._test_decode_cert(str(folder / "cluster.pem"))
    assert "dask-pbs-kit cluster of 7.server_x_y" in str(text["subject"])
    lasts = ssl.cert_time_to_seconds(text["notAfter"]) - ssl.cert_time_to_seconds(text["notBefore"])
    assert lasts == 3 * 86400  # 25 h of walltime: two days, plus one
    assert kit_cli.main(["tls"]) == 2
    assert "usage: kit.py tls FOLDER" in capsys.readouterr().err


def test_openssl_1_1_without_req_ca_takes_the_two_step_path(tmp_path, monkeypatch):
    # An openssl that refuses `req -CA`, as OpenSSL 1.1 (RHEL 8) does.
    real = tls_files.shutil.which("openssl")
    fake = tmp_path / "bin" / "openssl"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\ncase " $* " in *" req "*" -CA "*) echo "req: Unrecognized flag CA" >&2; exit 1;; esac\n'
                    f'exec {real} "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    folder = tmp_path / "tls"
    tls_files.create(str(folder), "1.old", days=2, backend="openssl")
    assert sorted(p.name for p in folder.iterdir()) == [
        "ca.pem", "client-config.json", "client.key", "client.pem", "cluster.key", "cluster.pem"]
    server = context(folder, "cluster.pem", "cluster.key", ssl.Purpose.CLIENT_AUTH)
    client = context(folder, "client.pem", "client.key", ssl.Purpose.SERVER_AUTH)
    assert handshake(server, client) == b"x"
