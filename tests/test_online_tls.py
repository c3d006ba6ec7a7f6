"""The CernVM Online client over HTTPS: a real TLS server on loopback with a certificate of a test CA."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ucernvm.context.online import http_request
from ucernvm.errors import ContextError

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def certificate(subject: str, key, issuer: x509.Name | None, signer, valid_from: datetime.datetime,  # type: ignore[no-untyped-def]
                ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(valid_from)
               .not_valid_after(valid_from + 30 * DAY)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture
def tls_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """An HTTPS server answering "ok", its certificate valid from ``request.param`` days from now."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("ucernvm test CA", ca_key, None, ca_key, NOW - DAY, ca=True)
    server = certificate("127.0.0.1", server_key, ca.subject, ca_key, NOW + request.param * DAY, ca=False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM) + server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}/", tmp_path / "ca.pem"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("tls_server", [-1], indirect=True)
def test_a_certificate_of_the_given_ca_is_trusted(tls_server: tuple[str, Path]) -> None:
    url, ca = tls_server
    assert http_request(url, cafile=str(ca), timeout=10) == (200, b"ok")


@pytest.mark.parametrize("tls_server", [-1], indirect=True)
def test_an_unknown_ca_is_refused(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    with pytest.raises(ContextError) as refused:
        http_request(url, timeout=10)  # the system's CAs only
    assert "certificate verify failed" in refused.value.message
    assert refused.value.hint == "check the network and the service URL"


@pytest.mark.parametrize("tls_server", [2], indirect=True)
def test_a_certificate_outside_its_dates_points_at_the_clock(tls_server: tuple[str, Path]) -> None:
    """Valid only from the day after tomorrow, as a good certificate looks to a machine whose clock is behind."""
    url, ca = tls_server
    with pytest.raises(ContextError) as refused:
        http_request(url, cafile=str(ca), timeout=10)
    assert "not yet valid" in refused.value.message
    assert "this machine's clock, which reads" in refused.value.hint and "ucernvm.ntp=" in refused.value.hint
