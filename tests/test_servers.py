"""tests/servers.py's servers behave as the remote-slide tests rely on: nginx serves ranges, ETags and folder
listings; moto's S3 server is reached by s3fs from the environment alone; FaultProxy's faults reach the clients
(http.client, aiohttp through fsspec, s3fs) as intended, and the next request is healthy."""
from __future__ import annotations

import errno
import http.client
import os
import socket
import threading
import time
import urllib.parse

import aiohttp
import fsspec
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from servers import FaultProxy, presigned_url, put_object, s3_env, serve_nginx, serve_s3

DATA = os.urandom(100_000)
HALF = f"bytes=0-{len(DATA) // 2 - 1}"


def get(url: str, rng: str | None = None, method: str = "GET", conn: http.client.HTTPConnection | None = None,
        **headers: str) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request by the standard library (on ``conn`` if given, else a new connection): status, headers, body."""
    parts = urllib.parse.urlsplit(url)
    conn = conn or http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, headers={**({"Range": rng} if rng else {}), **headers})
    resp = conn.getresponse()
    return resp.status, resp.headers, resp.read()


@pytest.fixture
def site(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(DATA)
    (tmp_path / "sub" / "b.bin").write_bytes(DATA[:1000])
    (tmp_path / "sub" / "c.bin").write_bytes(DATA[1000:3000])
    return tmp_path


@pytest.fixture
def nginx(site):
    with serve_nginx(site) as url:
        yield url


@pytest.fixture(scope="module")
def s3():
    with serve_s3() as endpoint:
        put_object(endpoint, "slides", "a.bin", DATA)
        yield endpoint


@pytest.fixture
def s3fs_at(monkeypatch):
    """``s3fs_at(endpoint, **more_env) -> S3FileSystem()``, made with no argument in the environment of s3_env
    (updated by ``more_env``, where None unsets a variable)."""
    import s3fs

    def make(endpoint: str, **more_env: str | None):
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        for name, value in {**s3_env(endpoint), **more_env}.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches by arguments: one made for another endpoint
        return s3fs.S3FileSystem()

    yield make
    s3fs.S3FileSystem.clear_instance_cache()


# ---------------------------------------------------------------------------------------------------------- nginx

def test_nginx_ranges_etags_and_conditions(nginx):
    status, headers, body = get(nginx + "/a.bin", method="HEAD")
    assert (status, int(headers["Content-Length"]), body) == (200, len(DATA), b"")
    etag = headers["ETag"]
    assert etag.startswith('"')  # strong: If-Match compares it
    status, headers, body = get(nginx + "/a.bin", "bytes=10-19")
    assert (status, body, headers["Content-Range"]) == (206, DATA[10:20], f"bytes 10-19/{len(DATA)}")
    assert get(nginx + "/a.bin", "bytes=10-19", **{"If-Match": etag})[::2] == (206, DATA[10:20])
    assert get(nginx + "/a.bin", "bytes=10-19", **{"If-Match": '"nope"'})[0] == 412
    assert get(nginx + "/a.bin", method="PUT")[0] == 403  # read-only
    assert get(nginx + "/missing.bin")[0] == 404


def test_nginx_through_fsspec_http(nginx):
    fs = fsspec.filesystem("http")
    assert fs.cat_file(nginx + "/a.bin", 1000, 1100) == DATA[1000:1100]
    assert fs.info(nginx + "/a.bin")["size"] == len(DATA)
    assert sorted(fs.ls(nginx + "/sub/", detail=False)) == [nginx + "/sub/b.bin", nginx + "/sub/c.bin"]


def test_nginx_takes_another_port_when_its_own_is_taken(site, monkeypatch):
    import servers

    with socket.socket() as taken:  # listening: nginx's bind fails and its pid file is never written
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1], servers.free_port()]
        monkeypatch.setattr(servers, "free_port", lambda: ports.pop(0))
        with serve_nginx(site) as url:
            assert ports == [] and get(url + "/a.bin", "bytes=10-19")[::2] == (206, DATA[10:20])


def test_nginx_access_log(nginx):
    get(nginx + "/a.bin", "bytes=10-19")
    deadline = time.monotonic() + 1
    while not nginx.requests() and time.monotonic() < deadline:  # written just after the response
        time.sleep(0.01)
    assert nginx.requests() == ['GET /a.bin 206 "bytes=10-19" 10']


# ---------------------------------------------------------------------------------------------------------- S3

@pytest.mark.parametrize("generic", [False, True])
def test_s3fs_reaches_moto_from_the_environment(s3, s3fs_at, generic):
    # s3_env's AWS_ENDPOINT_URL_S3, or the generic AWS_ENDPOINT_URL (every service) instead
    fs = s3fs_at(s3, AWS_ENDPOINT_URL_S3=None, AWS_ENDPOINT_URL=s3) if generic else s3fs_at(s3)
    # start= and end= by name: s3fs's cat_file takes version_id second
    assert fs.cat_file("s3://slides/a.bin", start=10, end=20) == DATA[10:20]
    info = fs.info("s3://slides/a.bin")
    assert info["size"] == len(DATA) and info["ETag"] == put_object(s3, "slides", "a.bin", DATA)


def test_s3_if_match(s3, s3fs_at):
    fs = s3fs_at(s3)
    etag = fs.info("s3://slides/a.bin")["ETag"]
    got = fs.call_s3("get_object", Bucket="slides", Key="a.bin", Range="bytes=0-9", IfMatch=etag)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    # s3fs translates the 412 into OSError(EINVAL) (errno 22), botocore's ClientError as its __cause__
    with pytest.raises(OSError) as caught:
        fs.call_s3("get_object", Bucket="slides", Key="a.bin", Range="bytes=0-9", IfMatch='"nope"')
    assert caught.value.errno == errno.EINVAL
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError) and cause.response["Error"]["Code"] == "PreconditionFailed"
    assert cause.response["ResponseMetadata"]["HTTPStatusCode"] == 412


# ---------------------------------------------------------------------------------------------------------- faults

@pytest.fixture(params=["nginx", "s3"])
def proxied(request):
    """(proxy, URL of a.bin through it): the proxy in front of nginx, then of moto (a presigned URL)."""
    if request.param == "nginx":
        with FaultProxy(request.getfixturevalue("nginx")) as proxy:
            yield proxy, proxy.url + "/a.bin"
    else:
        with FaultProxy(request.getfixturevalue("s3")) as proxy:
            yield proxy, presigned_url(proxy.url, "slides", "a.bin")


def healthy(url: str, conn: http.client.HTTPConnection | None = None) -> bool:
    return get(url, HALF, conn=conn)[::2] == (206, DATA[:len(DATA) // 2])


def test_proxy_drop(proxied):
    proxy, url = proxied
    proxy.drop(after=0.5)
    with pytest.raises(http.client.IncompleteRead) as caught:
        get(url, HALF)
    assert len(caught.value.partial) == len(DATA) // 4
    assert healthy(url)
    assert (proxy.requests, proxy.faults) == (2, 1)


def test_proxy_truncate_keeps_the_connection(proxied):
    proxy, url = proxied
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    proxy.truncate(keep=0.5)
    status, headers, body = get(url, HALF, conn=conn)
    assert (status, body) == (206, DATA[:len(DATA) // 4])
    assert headers["Content-Range"] == f"bytes 0-{len(DATA) // 4 - 1}/{len(DATA)}"
    assert healthy(url, conn)  # the same connection
    assert (proxy.requests, proxy.faults) == (2, 1)


def test_proxy_fail_passes_head(proxied):
    proxy, url = proxied
    proxy.fail(503, times=2)
    status, headers, body = get(url, method="HEAD")  # not a GET: unharmed, and no fault spent
    assert (status, int(headers["Content-Length"])) == (200, len(DATA))
    assert get(url, HALF)[0] == get(url, HALF)[0] == 503
    assert healthy(url)
    assert (proxy.requests, proxy.faults) == (3, 2)


def test_proxy_delay(proxied):
    proxy, url = proxied
    proxy.delay(0.3)
    start = time.monotonic()
    assert healthy(url)
    assert time.monotonic() - start >= 0.3
    assert (proxy.requests, proxy.faults) == (1, 1)


def test_proxy_down_and_up(proxied):
    proxy, url = proxied
    parts = urllib.parse.urlsplit(url)
    kept = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    assert healthy(url, kept)
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        get(url, HALF)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):  # an open connection is cut too
        get(url, HALF, conn=kept)
    proxy.up()
    assert healthy(url)
    assert (proxy.requests, proxy.faults) == (2, 0)


def test_proxy_keep_alive_and_concurrent_connections(proxied):
    proxy, url = proxied
    parts = urllib.parse.urlsplit(url)
    errors = []

    def client(seed: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        for i in range(10):
            start = (seed * 7919 + i * 104729) % (len(DATA) - 100)
            if get(url, f"bytes={start}-{start + 99}", conn=conn)[::2] != (206, DATA[start:start + 100]):
                errors.append((seed, i))

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and proxy.requests == 80


@pytest.mark.parametrize("fault", ["drop", "truncate", "fail", "down"])
def test_proxy_faults_through_fsspec_http(proxied, fault):
    """What aiohttp (through fsspec's HTTPFileSystem, which does not retry) makes of each fault."""
    proxy, url = proxied
    fs = fsspec.filesystem("http", skip_instance_cache=True)  # no pooled connection from another test
    half = len(DATA) // 2
    if fault == "truncate":
        proxy.truncate(keep=0.5)
        assert fs.cat_file(url, 0, half) == DATA[:half // 2]  # short, and no error
    else:
        expected = {"drop": aiohttp.ClientPayloadError, "fail": aiohttp.ClientResponseError,
                    "down": aiohttp.ClientConnectorError}[fault]
        getattr(proxy, fault)()
        with pytest.raises(expected) as caught:
            fs.cat_file(url, 0, half)
        if fault == "fail":
            assert caught.value.status == 503
        proxy.up()
    assert fs.cat_file(url, 0, half) == DATA[:half]


@pytest.fixture
def s3_proxy(s3):
    with FaultProxy(s3) as proxy:
        yield proxy


def test_s3fs_retries_a_drop(s3_proxy, s3fs_at):
    """s3fs retries an incomplete payload (aiohttp's ClientPayloadError) itself."""
    fs = s3fs_at(s3_proxy.url)
    s3_proxy.drop()
    assert fs.cat_file("s3://slides/a.bin", start=0, end=50_000) == DATA[:50_000]
    assert (s3_proxy.requests, s3_proxy.faults) == (2, 1)


def test_s3fs_retries_a_503(s3_proxy, s3fs_at):
    """botocore retries a 503 (by default up to 5 attempts, after a random backoff of up to a second)."""
    fs = s3fs_at(s3_proxy.url)
    s3_proxy.fail(503)
    assert fs.cat_file("s3://slides/a.bin", start=0, end=50_000) == DATA[:50_000]
    assert (s3_proxy.requests, s3_proxy.faults) == (2, 1)


def test_s3fs_returns_a_truncated_range_silently(s3_proxy, s3fs_at):
    fs = s3fs_at(s3_proxy.url)
    s3_proxy.truncate(keep=0.5)
    assert fs.cat_file("s3://slides/a.bin", start=0, end=50_000) == DATA[:25_000]  # the reader must check lengths


def test_s3fs_without_retries(s3_proxy, s3fs_at):
    """With botocore's retries off (AWS_MAX_ATTEMPTS=1): a 503 is OSError(EBUSY), a refused connection botocore's
    EndpointConnectionError (not an OSError; with retries on it comes after about 12 s of backoff)."""
    fs = s3fs_at(s3_proxy.url, AWS_MAX_ATTEMPTS="1")
    s3_proxy.fail(503)
    with pytest.raises(OSError) as caught:
        fs.cat_file("s3://slides/a.bin", start=0, end=10)
    assert caught.value.errno == errno.EBUSY
    s3_proxy.down()
    with pytest.raises(EndpointConnectionError):
        fs.cat_file("s3://slides/a.bin", start=0, end=10)
    s3_proxy.up()
    assert fs.cat_file("s3://slides/a.bin", start=0, end=10) == DATA[:10]
