"""The WebHDFS test server speaks the documented protocol, checked on raw HTTP."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hdfs import InsecureClient

from tests.webhdfs_server import WebHdfsTestServer, wait_for_port

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "webhdfs_server.py"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> dict:
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)


def send(url: str, method: str = "GET", body=None, headers: dict | None = None) -> Reply:
    """One request on a fresh connection; redirects are not followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with WebHdfsTestServer(tmp_path_factory.mktemp("protocol-root")) as running:
        wait_for_port(running.host, running.port)
        yield running


def op_url(server, path: str, op: str, **params) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"op": op, "user.name": "tester", **params}.items())
    return f"{server.url}/webhdfs/v1{path}?{query}"


def test_create_is_a_redirect_then_a_put_to_the_datanode(server):
    first = send(op_url(server, "/p/new.txt", "CREATE", overwrite="false"), "PUT")
    assert first.status == 307
    assert first.headers["Content-Length"] == "0"
    location = first.headers["Location"]
    assert location.startswith(f"{server.url}/datanode/webhdfs/v1/p/new.txt?")
    query = parse_qs(urlsplit(location).query)
    assert query["op"] == ["CREATE"] and query["overwrite"] == ["false"]
    assert "namenoderpcaddress" in query
    assert not (server.root / "p" / "new.txt").exists()  # the namenode takes no data

    second = send(location, "PUT", body=b"hello webhdfs")
    assert (second.status, second.headers["Content-Length"]) == (201, "0")
    assert second.headers["Location"] == f"webhdfs://127.0.0.1:{server.port}/p/new.txt"
    assert (server.root / "p" / "new.txt").read_bytes() == b"hello webhdfs"


def test_datanode_accepts_a_chunked_body(server):
    location = send(op_url(server, "/chunked.bin", "CREATE"), "PUT").headers["Location"]
    parts = urlsplit(location)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        pieces = (bytes([n]) * 1000 for n in range(10))
        conn.request("PUT", f"{parts.path}?{parts.query}", body=pieces, encode_chunked=True)
        assert conn.getresponse().status == 201
    finally:
        conn.close()
    assert (server.root / "chunked.bin").read_bytes() == b"".join(bytes([n]) * 1000 for n in range(10))


def test_create_on_an_existing_file_without_overwrite_fails_at_the_datanode(server):
    (server.root / "taken.txt").write_bytes(b"original")
    location = send(op_url(server, "/taken.txt", "CREATE", overwrite="false"), "PUT").headers["Location"]
    refused = send(location, "PUT", body=b"replacement")
    assert refused.status == 403
    error = refused.json()["RemoteException"]
    assert error["exception"] == "FileAlreadyExistsException"
    assert error["javaClassName"] == "org.apache.hadoop.fs.FileAlreadyExistsException"
    assert (server.root / "taken.txt").read_bytes() == b"original"

    location = send(op_url(server, "/taken.txt", "CREATE", overwrite="true"), "PUT").headers["Location"]
    assert send(location, "PUT", body=b"replacement").status == 201
    assert (server.root / "taken.txt").read_bytes() == b"replacement"


def test_noredirect_answers_the_location_as_json(server):
    reply = send(op_url(server, "/nr.txt", "CREATE", noredirect="true"), "PUT")
    assert reply.status == 200
    assert "Location" not in reply.headers
    assert "/datanode/webhdfs/v1/nr.txt?" in reply.json()["Location"]


def test_open_redirects_and_honours_offset_and_length(server):
    (server.root / "digits.txt").write_bytes(b"0123456789")
    first = send(op_url(server, "/digits.txt", "OPEN", offset=2, length=3))
    assert first.status == 307
    data = send(first.headers["Location"])
    assert (data.status, data.headers["Content-Type"], data.body) == (200, "application/octet-stream", b"234")
    rest = send(send(op_url(server, "/digits.txt", "OPEN", offset=7)).headers["Location"])
    assert rest.body == b"789"
    past_end = send(op_url(server, "/digits.txt", "OPEN", offset=10))
    assert past_end.status == 403
    assert past_end.json()["RemoteException"]["exception"] == "IOException"


def test_a_missing_file_is_a_remote_exception(server):
    reply = send(op_url(server, "/nope", "GETFILESTATUS"))
    assert reply.status == 404
    assert reply.json() == {
        "RemoteException": {
            "exception": "FileNotFoundException",
            "javaClassName": "java.io.FileNotFoundException",
            "message": "File does not exist: /nope",
        }
    }
    for op in ("OPEN", "GETFILECHECKSUM"):
        reply = send(op_url(server, "/nope", op))
        assert reply.status == 404 and "Location" not in reply.headers  # checked before redirecting
    append = send(op_url(server, "/nope", "APPEND"), "POST")
    assert append.json()["RemoteException"]["exception"] == "FileNotFoundException"


def test_an_unknown_op_is_an_illegal_argument(server):
    for method, op, enum in [("GET", "FROBNICATE", "GetOpParam"), ("PUT", "OPEN", "PutOpParam")]:
        reply = send(op_url(server, "/", op), method)
        assert reply.status == 400
        error = reply.json()["RemoteException"]
        assert error["exception"] == "IllegalArgumentException"
        assert error["javaClassName"] == "java.lang.IllegalArgumentException"
        assert f"{enum}.Op.{op}" in error["message"]


def test_file_status_and_listing_shapes(server):
    (server.root / "shapes" / "sub").mkdir(parents=True)
    (server.root / "shapes" / "b.bin").write_bytes(b"12345")
    status = send(op_url(server, "/shapes/b.bin", "GETFILESTATUS")).json()["FileStatus"]
    documented = set(
        ["accessTime", "blockSize", "childrenNum", "fileId", "group", "length", "modificationTime", "owner", "pathSuffix", "permission", "replication", "type"]
    )
    assert documented <= status.keys()
    assert (status["type"], status["length"], status["pathSuffix"]) == ("FILE", 5, "")
    assert abs(status["modificationTime"] - time.time() * 1000) < 60_000  # milliseconds
    assert re.fullmatch(r"[0-7]{3,4}", status["permission"])

    listing = send(op_url(server, "/shapes", "LISTSTATUS")).json()["FileStatuses"]["FileStatus"]
    assert [(s["pathSuffix"], s["type"]) for s in listing] == [("b.bin", "FILE"), ("sub", "DIRECTORY")]
    of_a_file = send(op_url(server, "/shapes/b.bin", "LISTSTATUS")).json()["FileStatuses"]["FileStatus"]
    assert [s["pathSuffix"] for s in of_a_file] == [""]


def test_rename_answers_false_rather_than_failing(server):
    folder = server.root / "mv"
    folder.mkdir()
    (folder / "a").write_bytes(b"A")
    (folder / "b").write_bytes(b"B")
    (folder / "d").mkdir()

    def rename(src: str, dst: str) -> bool:
        reply = send(op_url(server, src, "RENAME", destination=dst), "PUT")
        assert reply.status == 200
        return reply.json()["boolean"]

    assert rename("/mv/a", "/mv/b") is False  # destination exists
    assert rename("/mv/missing", "/mv/c") is False
    assert rename("/mv/a", "/mv/no/such/folder") is False
    assert rename("/mv/a", "/mv/c") is True
    assert rename("/mv/c", "/mv/d") is True  # into the existing folder
    assert (folder / "d" / "c").read_bytes() == b"A"


def test_delete(server):
    (server.root / "del" / "full").mkdir(parents=True)
    (server.root / "del" / "full" / "f").write_bytes(b"x")
    assert send(op_url(server, "/del/missing", "DELETE"), "DELETE").json() == {"boolean": False}
    refused = send(op_url(server, "/del/full", "DELETE", recursive="false"), "DELETE")
    assert refused.status == 403
    assert refused.json()["RemoteException"]["exception"] == "PathIsNotEmptyDirectoryException"
    assert send(op_url(server, "/del/full", "DELETE", recursive="true"), "DELETE").json() == {"boolean": True}
    assert not (server.root / "del" / "full").exists()


def test_append_is_a_redirect_then_a_post_to_the_datanode(server):
    (server.root / "log.txt").write_bytes(b"one\n")
    first = send(op_url(server, "/log.txt", "APPEND"), "POST")
    assert first.status == 307
    second = send(first.headers["Location"], "POST", body=b"two\n")
    assert (second.status, second.body) == (200, b"")
    assert (server.root / "log.txt").read_bytes() == b"one\ntwo\n"


def test_file_checksum_shape(server):
    def checksum(name: str, content: bytes) -> dict:
        (server.root / name).write_bytes(content)
        first = send(op_url(server, f"/{name}", "GETFILECHECKSUM"))
        assert first.status == 307
        return send(first.headers["Location"]).json()["FileChecksum"]

    one = checksum("c1", b"same")
    assert re.fullmatch(r"MD5-of-\d+MD5-of-512CRC32C", one["algorithm"])
    assert one["length"] == 28 and re.fullmatch(r"[0-9a-f]{56}", one["bytes"])
    assert checksum("c2", b"same") == one
    assert checksum("c3", b"different") != one


def test_namenode_drains_an_unexpected_body_on_a_kept_alive_connection(server):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("PUT", "/webhdfs/v1/early.txt?op=CREATE&user.name=t", body=b"data sent too early")
        response = conn.getresponse()
        response.read()
        assert response.status == 307
        conn.request("GET", "/webhdfs/v1/?op=GETFILESTATUS&user.name=t")
        response = conn.getresponse()
        assert json.loads(response.read())["FileStatus"]["type"] == "DIRECTORY"
    finally:
        conn.close()


def test_access_control_exception(tmp_path):
    with WebHdfsTestServer(tmp_path, allowed_users={"backup"}) as guarded:
        denied = send(op_url(guarded, "/", "GETFILESTATUS").replace("user.name=tester", "user.name=mallory"))
        assert denied.status == 403
        error = denied.json()["RemoteException"]
        assert error["exception"] == "AccessControlException"
        assert error["javaClassName"] == "org.apache.hadoop.security.AccessControlException"
        allowed = send(op_url(guarded, "/", "GETFILESTATUS").replace("user.name=tester", "user.name=backup"))
        assert allowed.status == 200


def test_the_hdfs_package_client_works_unmodified(server):
    client = InsecureClient(server.url, user="backup")
    client.write("/client/f.bin", data=(piece for piece in [b"abc", b"def"]))
    with client.read("/client/f.bin", offset=1, length=4) as reader:
        assert reader.read() == b"bcde"
    assert client.list("/client") == ["f.bin"]
    client.rename("/client/f.bin", "/client/g.bin")
    assert client.status("/client/g.bin")["length"] == 6
    assert client.checksum("/client/g.bin")["length"] == 28
    assert client.delete("/client", recursive=True) is True


def test_command_line_entry_point(tmp_path):
    process = subprocess.Popen(
        [sys.executable, str(SERVER_SCRIPT), "--root", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        url = re.search(r"http://[\w.]+:\d+", banner).group(0)
        parts = urlsplit(url)
        wait_for_port(parts.hostname, parts.port)
        (tmp_path / "seen.txt").write_bytes(b"x")
        listing = send(f"{url}/webhdfs/v1/?op=LISTSTATUS&user.name=t").json()
        assert [s["pathSuffix"] for s in listing["FileStatuses"]["FileStatus"]] == ["seen.txt"]
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        process.stdout.close()
