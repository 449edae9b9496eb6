"""`pneumoscan serve` as a real uvicorn process: loopback by default, HTTP-level abuse (lying
Content-Length, broken chunking, stalled bodies, header floods) answered without a 5xx, the API key
from the environment, and settings reaching every worker process."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from serve_fixtures import NORMAL_FILM, file_part, multipart

from pneumoscan.devtools.loadtest import ServerProcess

BOUNDARY = "pneumoscan-test"


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--timeout", "2", "--max-upload-mb", "2"]) as process:
        yield process


def raw_request(port: int, data: bytes, pause_after: float = 0.0, timeout: float = 10.0) -> bytes:
    """Send bytes as they are and return whatever the server answers before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and len(answer) > 200:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def status_of(answer: bytes) -> int | None:
    """The HTTP status code, or None when the server closed the connection without one."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def head(port: int, path: str, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n".encode()
        + extra
    )


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_binds_to_loopback_only_by_default(server):
    assert listening_addresses(server.port) == {"127.0.0.1"}


def test_real_prediction_over_http(server):
    status, body = post(
        server.url + "/v1/predict",
        multipart([file_part(NORMAL_FILM.read_bytes())], BOUNDARY.encode()),
    )
    assert status == 200 and body["status"] == "ok" and body["notice"]


def test_lying_content_length_is_refused_before_the_body(server):
    started = time.monotonic()
    answer = raw_request(
        server.port, head(server.port, "/v1/predict", b"Content-Length: 10000000000\r\n\r\n")
    )
    assert status_of(answer) == 413 and time.monotonic() - started < 5


def test_chunked_body_over_the_limit_is_413(server):
    chunk = b"x" * 65536
    body = multipart([file_part(b"\xff\xd8\xff" + chunk * 48)], BOUNDARY.encode())  # ~3 MB
    encoded = b"".join(
        b"%x\r\n" % len(body[i : i + 65536]) + body[i : i + 65536] + b"\r\n"
        for i in range(0, len(body), 65536)
    )
    request = (
        head(server.port, "/v1/predict", b"Transfer-Encoding: chunked\r\n\r\n")
        + encoded
        + b"0\r\n\r\n"
    )
    assert status_of(raw_request(server.port, request)) == 413


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"Transfer-Encoding: chunked\r\n\r\nzzzz\r\nhello\r\n0\r\n\r\n",
        b"Content-Length: -5\r\n\r\n",
        b"Content-Length: 5\r\nContent-Length: 7\r\n\r\nabcdefg",
        b"X-Flood: " + b"a" * 200_000 + b"\r\n\r\n",
        b"Content-Length: abc\r\n\r\n",
    ],
    ids=["bad-chunk-size", "negative-length", "two-lengths", "header-flood", "text-length"],
)
def test_broken_http_gets_4xx_or_a_closed_connection(server, request_bytes):
    answer = raw_request(server.port, head(server.port, "/v1/predict", request_bytes))
    status = status_of(answer)
    assert status is None or 400 <= status < 500, answer[:200]
    assert urllib.request.urlopen(server.url + "/healthz", timeout=5).status == 200


def test_stalled_upload_is_cut_off_by_the_time_limit(server):
    body = multipart([file_part(NORMAL_FILM.read_bytes())], BOUNDARY.encode())
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            head(server.port, "/v1/predict", f"Content-Length: {len(body)}\r\n\r\n".encode())
            + body[:1000]
        )
        answer = connection.recv(65536)  # the rest never comes
    assert status_of(answer) == 408
    assert time.monotonic() - started < 6


def test_api_key_from_the_environment_and_settings_reach_every_worker():
    env = {"PNEUMOSCAN_API_KEY": "worker-key"}
    with ServerProcess(["--workers", "2", "--max-upload-mb", "0.01"], env=env) as process:
        body = multipart([file_part(NORMAL_FILM.read_bytes())], BOUNDARY.encode())  # 14 KB
        statuses = set()
        for _ in range(6):  # several connections, so both workers answer some
            status, answer = post(process.url + "/v1/predict", body, {"X-API-Key": "worker-key"})
            statuses.add((status, answer["error"]))
        assert statuses == {(413, "file_too_large")}
        status, answer = post(process.url + "/v1/predict", body)
        assert status == 401 and answer["error"] == "unauthorized"


def _peak_rss_mb(pid: int) -> float:
    """The largest peak RSS (VmHWM) of a process and its descendants (uvicorn workers)."""
    peaks, todo = [], [pid]
    while todo:
        current = todo.pop()
        status = Path(f"/proc/{current}/status").read_text()
        peaks.append(int(status.split("VmHWM:")[1].split()[0]) / 1024)
        for task in Path(f"/proc/{current}/task").iterdir():
            todo += [int(child) for child in (task / "children").read_text().split()]
    return max(peaks)


def test_deflate_bomb_is_413_in_bounded_memory(server):
    """~1 MB of Deflated DICOM that inflates to 1 GiB (it took the server to ~2 GB and a 200)."""
    from dicom_bomb import deflate_bomb

    body = multipart([file_part(deflate_bomb(), b"application/dicom")], BOUNDARY.encode())
    status, answer = post(f"{server.url}/v1/predict", body)
    assert status == 413, answer
    assert "Deflated DICOM inflates to over" in json.dumps(answer)
    peak = _peak_rss_mb(server.process.pid)
    assert peak < 600, f"serve peaked at {peak:.0f} MB on a 1 MB upload"
