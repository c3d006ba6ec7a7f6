"""CernVM Online: the PIN client against the service over real HTTP, and the formats against the
real tools (openssl, sha1sum)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import PROJECT
from ucernvm.context.online import (
    MAX_REPLY, checksum, decrypt, encrypt, evp_bytes_to_key, fetch_context, http_request, needs_secret,
    normalize_pin, parse_reply, salt,
)
from ucernvm.errors import ConfigError, ContextError
from ucernvm.server.online import Context, OnlineServer, OnlineService, gen_pin

USER_DATA = b"#cloud-config\nhostname: paired\n[ucernvm-begin]\ncvmfs_http_proxy=\"DIRECT\"\n[ucernvm-end]\n"
PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH+demo/key= root@demo.example"
SECRET = "s3cret pass"

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(clock: Clock) -> OnlineService:
    return OnlineService([
        Context("Démo context!", USER_DATA, root_pubkey=PUBKEY),
        Context("secret", b"#cloud-config\nsecret: yes\n", secret=SECRET),
        Context("other owner", b"#!/bin/sh\n", owner="someone else"),
    ], clock=clock)


@pytest.fixture
def server(service: OnlineService):
    with OnlineServer(service) as running:
        yield running


def fetch(server: OnlineServer, pin: str, secret: str = "", machine: str = "vm-1"):
    return fetch_context(pin, secret, service_url=server.url, machine=machine, version="test")


# --- PINs, salts, checksums ---------------------------------------------------------------------


def test_pins_are_six_digits_with_spaces_and_dashes_ignored() -> None:
    assert normalize_pin(" 123 456 ") == "123456"
    assert normalize_pin("123-456") == "123456"
    for bad in ("12345", "1234567", "12a456", "", "١٢٣٤٥٦", "#123456"):
        with pytest.raises(ContextError, match="not a CernVM Online PIN"):
            normalize_pin(bad)
    assert needs_secret("123457") and not needs_secret("123456")


def test_salt_is_the_sum_of_the_first_four_digits_with_defaults() -> None:
    assert salt("123456") == "10"
    assert salt("000001") == "00"
    assert salt("999999") == "36"
    assert salt("a5b6c") == "18"  # 5 + 6, then the defaults 3 and 4
    assert salt("") == "10"
    assert salt("f3e9d8c7b6a5") == "27"  # a context UUID: its first 4 digits


def test_checksum_matches_the_real_clients_shell_pipeline() -> None:
    # cernvm-online.sh: echo -n "${SALT}${CONTEXT_KEY}${SALT}" | sha1sum
    for pin, secret in (("123457", SECRET), ("000000", ""), ("987655", "ünïcode")):
        pepper = salt(pin)
        result = subprocess.run(["sha1sum"], input=f"{pepper}{secret}{pepper}".encode(), capture_output=True,
                                check=True)
        assert checksum(pin, secret) == result.stdout.split()[0].decode()
    assert checksum("123457", "x") == hashlib.sha1(b"10x10").hexdigest()


# --- encryption, against openssl ----------------------------------------------------------------


def _openssl(*args: str, data: bytes = b"") -> bytes:
    result = subprocess.run(["openssl", "enc", "-aes-256-cfb8", "-md", "md5", *args], input=data,
                            capture_output=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


@needs_openssl
def test_key_derivation_is_openssls() -> None:
    output = _openssl("-k", SECRET, "-S", "0102030405060708", "-P").decode()
    printed = dict(re.findall(r"^(\w+)\s*=\s*([0-9A-F]+)", output, re.MULTILINE))
    key, iv = evp_bytes_to_key(SECRET.encode(), bytes.fromhex("0102030405060708"))
    assert printed["key"].lower() == key.hex() and printed["iv"].lower() == iv.hex()


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000])
def test_encryption_round_trips_with_openssl(size: int) -> None:
    plain = bytes(range(256)) * 4
    plain = plain[:size]
    # ours -> openssl
    assert _openssl("-d", "-k", SECRET, data=encrypt(plain, SECRET)) == plain
    # openssl -> ours
    encrypted = _openssl("-k", SECRET, data=plain)
    assert encrypted.startswith(b"Salted__") and len(encrypted) == 16 + size  # CFB8: no padding
    assert decrypt(encrypted, SECRET) == plain


@needs_openssl
def test_an_encrypted_context_from_the_service_decrypts_with_openssl(server: OnlineServer,
                                                                      service: OnlineService) -> None:
    """What the real shell client does: sed s/ENCRYPTED:// | base64 -di | openssl enc -d."""
    pin = service.new_pin("secret")
    query = urllib.parse.urlencode({"uuid": "vm", "ver": "1", "pin": pin, "checksum": checksum(pin, SECRET)})
    status, body = http_request(f"{server.url}/api/context?{query}")
    assert status == 200 and body.startswith(b"ENCRYPTED:")
    plain = _openssl("-d", "-k", SECRET, data=base64.b64decode(body[len(b"ENCRYPTED:"):]))
    lines = dict(line.split("=", 1) for line in plain.decode().splitlines())
    assert base64.b64decode(lines["EC2_USER_DATA"]) == b"#cloud-config\nsecret: yes\n"


# --- the service over HTTP ----------------------------------------------------------------------


def test_a_pin_fetches_its_context(server: OnlineServer, service: OnlineService) -> None:
    pin = service.new_pin("Démo context!")
    context = fetch(server, f"{pin[:3]}-{pin[3:]}")
    assert context.user_data == USER_DATA
    assert context.root_pubkey == PUBKEY
    assert context.name == "Demo context"  # sanitized as the service does
    assert context.context_uuid == service.context("Démo context!").uuid
    assert service.pin_status(pin) == "claimed"
    assert service.machines["vm-1"]["version"] == "test"


@pytest.mark.parametrize("path", ["/api/fetch", "/vm/api/context", "/vm/api/fetch"])
def test_the_aliases_serve_the_same_view(server: OnlineServer, service: OnlineService, path: str) -> None:
    pin = service.new_pin("Démo context!")
    query = urllib.parse.urlencode({"uuid": "vm", "ver": "1", "pin": pin, "checksum": checksum(pin, "")})
    status, body = http_request(f"{server.url}{path}?{query}")
    assert status == 200 and parse_reply(body).user_data == USER_DATA


@pytest.mark.parametrize("missing", ["uuid", "ver", "pin", "checksum"])
def test_a_request_without_a_parameter_is_400(server: OnlineServer, missing: str) -> None:
    params = {"uuid": "vm", "ver": "1", "pin": "123456", "checksum": "x"}
    del params[missing]
    status, _ = http_request(f"{server.url}/api/context?{urllib.parse.urlencode(params)}")
    assert status == 400


def test_a_context_id_fetches_without_a_pin(server: OnlineServer, service: OnlineService) -> None:
    context = service.context("secret")
    query = {"uuid": "vm", "ver": "1", "context_id": context.uuid, "checksum": checksum(context.uuid, SECRET)}
    status, body = http_request(f"{server.url}/api/context?{urllib.parse.urlencode(query)}")
    assert status == 200 and parse_reply(body, secret=SECRET).user_data == context.user_data


def test_a_pin_pairs_only_once(server: OnlineServer, service: OnlineService) -> None:
    pin = service.new_pin("Démo context!")
    fetch(server, pin)
    with pytest.raises(ContextError, match="not-found") as error:
        fetch(server, pin, machine="vm-2")
    assert "request a new one" in error.value.hint


def test_an_unknown_pin_is_not_found(server: OnlineServer) -> None:
    with pytest.raises(ContextError, match=r"no context for PIN 000000 \(not-found\)"):
        fetch(server, "000000")


def test_a_pin_expires_after_five_minutes(server: OnlineServer, service: OnlineService, clock: Clock) -> None:
    young, old = service.new_pin("Démo context!"), service.new_pin("Démo context!")
    clock.now += 299
    assert fetch(server, young).user_data == USER_DATA
    clock.now += 2
    assert service.pin_status(old) == "expired"
    with pytest.raises(ContextError, match="not-found"):
        fetch(server, old)


def test_an_encrypted_context_needs_the_right_secret(server: OnlineServer, service: OnlineService) -> None:
    pin = service.new_pin("secret")
    assert needs_secret(pin) and salt(pin) == salt(service.context("secret").uuid)
    with pytest.raises(ContextError, match=r"refused the secret .*\(invalid-checksum\)"):
        fetch(server, pin, "wrong")
    assert service.pin_status(pin) == "unclaimed"  # a wrong secret does not use the PIN up
    assert fetch(server, pin, SECRET).user_data == b"#cloud-config\nsecret: yes\n"


def test_an_odd_pin_without_a_secret_is_refused_before_asking(server: OnlineServer,
                                                              service: OnlineService) -> None:
    pin = service.new_pin("secret")
    with pytest.raises(ContextError, match="encrypted context: its secret is needed"):
        fetch(server, pin)
    assert service.pin_status(pin) == "unclaimed"
    assert service.machines == {}


def test_a_machine_of_another_owner_is_not_authorized(server: OnlineServer, service: OnlineService) -> None:
    fetch(server, service.new_pin("Démo context!"), machine="vm-9")
    pin = service.new_pin("other owner")
    with pytest.raises(ContextError, match="not-authorized"):
        fetch(server, pin, machine="vm-9")
    assert service.pin_status(pin) == "error"


def test_a_context_id_moves_a_machine_to_the_contexts_owner(server: OnlineServer, service: OnlineService) -> None:
    """The cloud variant (contextualization_key=<context id>) is the owner's own launch: the service
    registers the machine to the context's owner, whoever paired it before, and never answers
    not-authorized to it."""
    fetch(server, service.new_pin("Démo context!"), machine="vm-9")
    context = service.context("other owner")
    query = {"uuid": "vm-9", "ver": "1", "context_id": context.uuid, "checksum": checksum(context.uuid, "")}
    status, body = http_request(f"{server.url}/api/context?{urllib.parse.urlencode(query)}")
    assert status == 200 and parse_reply(body).user_data == context.user_data
    assert service.machines["vm-9"]["owner"] == "someone else"


def test_the_invalid_request_token(server: OnlineServer, service: OnlineService) -> None:
    service.replies["222222"] = b"invalid-request\n"
    with pytest.raises(ContextError, match=r"rejected the request \(invalid-request\)"):
        fetch(server, "222222")


GARBAGE = {
    "huge": (b"EC2_USER_DATA=" + b"A" * MAX_REPLY, "larger than"),
    "nul": (b"EC2_USER_DATA=aGk=\x00\n", "NUL bytes"),
    "not utf-8": (b"EC2_USER_DATA=aGk=\n\xff\xfe\n", "not UTF-8"),
    "broken base64": (b"VM_CONTEXT_UUID=x\nEC2_USER_DATA=aGk$$$\n", "EC2_USER_DATA .* not valid base64"),
    "broken key": (b"EC2_USER_DATA=aGk=\nROOT_PUBKEY=c3No%LWV\n", "ROOT_PUBKEY .* not valid base64"),
    "html": (b"<html><body>Proxy error</body></html>\n", "no EC2_USER_DATA .*<html>"),
    "empty": (b"", "no EC2_USER_DATA"),
    "encrypted, broken base64": (b"ENCRYPTED:U2FsdGVkX1@@@", "encrypted context .* not valid base64"),
    "encrypted, no base64 at all": (b"ENCRYPTED:@@@", "no 'Salted__' header"),  # base64 -di makes nothing of it
    "encrypted, no header": (b"ENCRYPTED:" + base64.b64encode(b"0123456789abcdefghij"), "no 'Salted__' header"),
}


@pytest.mark.parametrize("case", GARBAGE)
def test_garbage_replies_are_clear_errors(server: OnlineServer, service: OnlineService, case: str) -> None:
    body, message = GARBAGE[case]
    service.replies["222225"] = body
    with pytest.raises(ContextError, match=message):
        fetch(server, "222225", SECRET)


def test_a_wrong_secret_on_an_encrypted_reply_does_not_pass_for_a_context() -> None:
    body = b"ENCRYPTED:" + base64.b64encode(encrypt(b"EC2_USER_DATA=aGk=\n" * 8, SECRET))
    assert parse_reply(body, secret=SECRET).user_data == b"hi"
    with pytest.raises(ContextError, match="does not decrypt to a context"):
        parse_reply(body, secret="not it")
    with pytest.raises(ContextError, match="encrypted and no secret"):
        parse_reply(body)


# What the real client pipes through `base64 -di`: stray characters, padding between runs, cut-off ends.
GNU_BASE64_CASES = ["aGk=", "aG k=\r\n", "a!G@k#=", "aGk", "aGk==", "aG=k", "=aGk=", "YQ==YQ==", "YWJ=Y2Rl", "",
                    "%%%", "aGk=Y", "YWJjZGVm Z2hp", "YW\tJj*Z.GVm"]


@pytest.mark.skipif(shutil.which("base64") is None or "GNU" not in subprocess.run(
    ["base64", "--version"], capture_output=True, text=True).stdout, reason="needs GNU coreutils' base64")
@pytest.mark.parametrize("text", GNU_BASE64_CASES)
def test_user_data_decodes_as_gnu_base64_di_does(text: str) -> None:
    """The same bytes as the real client's `base64 -di`, and an error exactly where that fails."""
    gnu = subprocess.run(["base64", "-di"], input=text.encode(), capture_output=True)
    body = f"EC2_USER_DATA={text}\n".encode()
    if gnu.returncode != 0:
        with pytest.raises(ContextError, match="EC2_USER_DATA .* not valid base64"):
            parse_reply(body)
    elif text.strip():  # the real client (and this one) wants a non-empty EC2_USER_DATA line
        assert parse_reply(body).user_data == gnu.stdout


def test_a_malformed_but_decodable_context_is_taken() -> None:
    """Stray spaces and punctuation, as a copy-paste leaves them, are skipped as base64 -di skips them."""
    user_data, key = base64.b64encode(b"#cloud-config\n").decode(), base64.b64encode(b"ssh-ed25519 AAAA u@h").decode()
    body = f"EC2_USER_DATA={user_data[:8]} \\{user_data[8:]}\nROOT_PUBKEY= {key[:10]}. {key[10:]}\n"
    context = parse_reply(body.encode())
    assert (context.user_data, context.root_pubkey) == (b"#cloud-config\n", "ssh-ed25519 AAAA u@h")


def test_an_openssl_base64_reply_with_line_breaks_is_accepted() -> None:
    encrypted = base64.encodebytes(encrypt(b"EC2_USER_DATA=aGk=\n" * 10, SECRET))  # 76-column lines
    assert b"\n" in encrypted.strip()
    assert parse_reply(b"ENCRYPTED:" + encrypted, secret=SECRET).user_data == b"hi"


def test_http_errors_and_unreachable_services(server: OnlineServer) -> None:
    with pytest.raises(ContextError, match="answered HTTP 404"):
        fetch_context("123456", service_url=f"{server.url}/elsewhere", machine="vm")
    port = server.port
    server.stop()
    with pytest.raises(ContextError, match=f"cannot reach http://127.0.0.1:{port}"):
        fetch_context("123456", service_url=f"127.0.0.1:{port}", machine="vm")  # no scheme: http, as curl


@contextmanager
def raw_service(reply: bytes) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that answers one connection with ``reply`` and closes it; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(5)


NOT_REPLIES = {
    "not http": (b"SSH-2.0-OpenSSH_9.2\r\n", "did not answer in HTTP"),
    "endless header": (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "did not answer in HTTP"),
    "cut off": (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nEC2_USER_DATA=aGVsbG8K\n", "cut off"),
    "cut off chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\nEC2_USER_DATA=aGVsbG8K\n",
                      "cut off"),
}


@pytest.mark.parametrize("case", NOT_REPLIES)
def test_a_service_that_does_not_answer_in_http_is_a_clear_error(case: str) -> None:
    """What a wrong port or a broken connection gives is a ContextError, which the boot reports and the
    cluster pairing retries, never another exception, and a cut-off reply is never taken for a context."""
    reply, message = NOT_REPLIES[case]
    with raw_service(reply) as url, pytest.raises(ContextError, match=message):
        fetch_context("123456", service_url=url, machine="vm", version="test")


# --- the service's PINs and definitions ---------------------------------------------------------


def test_generated_pins_carry_the_salt_and_the_encryption_mark() -> None:
    for name in ("a", "b", "c", "d"):
        plain, secret = Context(name, b""), Context(name, b"", secret="x")
        for _ in range(200):
            pin = gen_pin(plain)
            assert len(pin) == 6 and pin.isdigit() and not needs_secret(pin)
            pin = gen_pin(secret)
            assert needs_secret(pin) and salt(pin) == salt(secret.uuid)


def test_the_pairing_page_hands_out_pins(server: OnlineServer, service: OnlineService) -> None:
    status, body = http_request(f"{server.url}/vm/pair/secret")
    pin = body.decode().strip()
    assert status == 200 and needs_secret(pin)
    status, body = http_request(f"{server.url}/vm/ajax/machine/status/{pin}")
    assert json.loads(body) == {"status": "unclaimed"}
    assert http_request(f"{server.url}/vm/pair/nothing")[0] == 404


def test_definitions_file(tmp_path: Path, clock: Clock) -> None:
    (tmp_path / "ud.yaml").write_bytes(b"#cloud-config\nfrom: file\n")
    uuid = "0123456789abcdef0123456789abcdef"  # salt 0+1+2+3 = 6
    (tmp_path / "defs.json").write_text(json.dumps({
        "pin_lifetime": 60,
        "contexts": [{"name": "file", "user_data_file": "ud.yaml", "pins": ["424242"]},
                     {"name": "enc", "uuid": uuid, "secret": "k", "user_data": "x", "pins": ["123015"]}],
        "clusters": [{"pin": "abcdefghij12", "keys": {"master_ip": "10.0.0.1"}}],
        "replies": {"111110": "not-authorized", "111112": {"base64": base64.b64encode(b"\xff").decode()}},
    }))
    service = OnlineService.load(tmp_path / "defs.json", clock=clock)
    with OnlineServer(service) as server:
        assert fetch(server, "424242").user_data == b"#cloud-config\nfrom: file\n"
        assert fetch(server, "123015", "k").user_data == b"x"
        with pytest.raises(ContextError, match="not-authorized"):
            fetch(server, "111110")
        with pytest.raises(ContextError, match="not UTF-8"):
            fetch(server, "111112")
    assert service.pin_lifetime == 60


@pytest.mark.parametrize("entry, message", [
    ({"name": "e", "secret": "k", "pins": ["123456"]}, "even digit, but context 'e' is encrypted"),
    ({"name": "p", "pins": ["123457"]}, "odd digit, but context 'p' is not encrypted"),
    ({"name": "e", "secret": "k", "uuid": "0123456789abcdef0123456789abcdef", "pins": ["999991"]},
     "must add up to 6"),
    ({"name": "p", "pins": ["12345"]}, "not 6 digits"),
    ({"name": "p", "uuid": "XYZ"}, "uuid must be 32"),
    ({"user_data": "x"}, "lacks 'name'"),
    ({"name": "p", "user_data_file": "missing"}, "cannot read"),
])
def test_bad_definitions_are_config_errors(tmp_path: Path, entry: dict, message: str) -> None:
    (tmp_path / "defs.json").write_text(json.dumps({"contexts": [entry]}))
    with pytest.raises(ConfigError, match=message):
        OnlineService.load(tmp_path / "defs.json")


def test_a_definitions_file_that_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "defs.json").write_text("{contexts: []}")
    with pytest.raises(ConfigError, match="is not JSON"):
        OnlineService.load(tmp_path / "defs.json")


def test_serve_online_serves_the_api_next_to_the_repositories(tmp_path: Path) -> None:
    (tmp_path / "repos").mkdir()
    (tmp_path / "defs.json").write_text(json.dumps({"contexts": [{"name": "demo", "user_data": "hello"}]}))
    process = subprocess.Popen(
        [sys.executable, "-m", "ucernvm", "serve", str(tmp_path / "repos"), "--port", "0",
         "--online", str(tmp_path / "defs.json"), "--online-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().decode() for _ in range(3)]
        assert lines[0].startswith("serving ") and lines[1].startswith("CernVM Online API on http://127.0.0.1:")
        url = lines[1].split()[-1]
        pin = re.search(r"context 'demo': PIN (\d{6}),", lines[2])[1]  # type: ignore[index]
        assert fetch_context(pin, service_url=url, machine="vm").user_data == b"hello"
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
