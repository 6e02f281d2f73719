"""Real servers on 127.0.0.1 for the remote-slide tests, started and stopped by the tests themselves: nginx serving a
folder over HTTP, moto's S3 server, and FaultProxy, a fault-injecting HTTP proxy in front of either. No fake of a
storage API is written here: the clients under test talk HTTP to real servers."""
from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import logging
import os
import re
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (for servers that must be told their port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    """Whether something accepts a TCP connection on ``127.0.0.1:port``."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


# ---------------------------------------------------------------------------------------------------------- nginx

class ServerURL(str):
    """A server's base URL, ``http://127.0.0.1:PORT`` (a str, no trailing slash), with its nginx access log."""

    access_log: Path

    def requests(self) -> list[str]:
        """The requests served so far, one line each: ``'GET /a.bin 206 "bytes=10-19" 10'`` (method, URI, status,
        Range header, body bytes sent). nginx writes a line just after the response, so it may lag by a moment."""
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


_NGINX_CONF = """\
daemon off;
master_process off;  # one process, which never switches user: works as root and as anyone else
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" warn;
events {{ worker_connections 256; }}
http {{
    log_format brief '$request_method $request_uri $status "$http_range" $body_bytes_sent';
    access_log "{tmp}/access.log" brief;
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        autoindex on;  # fsspec's HTTPFileSystem lists a folder from its index page
        etag on;
        location / {{ limit_except GET {{ deny all; }} }}  # read-only: GET and HEAD
    }}
}}
"""


def _nginx() -> str:
    """nginx's path (also looked for in the sbin folders a normal user's PATH may lack), or skip the test."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin:/sbin")
    if found is None:
        pytest.skip("nginx is not installed: run .ci/run, or `apt-get install nginx-light`")
    return found


@contextlib.contextmanager
def serve_nginx(root: Path) -> Iterator[ServerURL]:
    """Serve folder ``root`` read-only with nginx on 127.0.0.1 (ranges, ETags, If-Match, autoindex) while the context
    is open; yields its base URL (a :class:`ServerURL`). Skips the test when nginx is not installed."""
    nginx = _nginx()
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="nginx-") as tmp:
        error_log = Path(tmp, "error.log")
        for _ in range(3):  # another process may take the free port before nginx binds it: try another
            port = free_port()
            conf = Path(tmp, "nginx.conf")
            error_log.unlink(missing_ok=True)  # a fresh log: its earlier bind failure is not this one's
            conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port, root=f'"{root}"'))
            proc = subprocess.Popen([nginx, "-p", tmp, "-c", str(conf), "-e", str(error_log)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            if _listening(proc, Path(tmp, "nginx.pid"), error_log, port, timeout=10):
                break
            _stop(proc)
            log = error_log.read_text() if error_log.exists() else "(no error log)"
            if "Address already in use" not in log:
                raise RuntimeError(f"nginx did not start on 127.0.0.1:{port} (10 s at most); its error log:\n{log}")
        else:
            raise RuntimeError(f"nginx found no free port; its error log:\n{error_log.read_text()}")
        url = ServerURL(f"http://127.0.0.1:{port}")
        url.access_log = Path(tmp, "access.log")
        try:
            yield url
        finally:
            _stop(proc)


def _listening(proc: subprocess.Popen, pid_file: Path, error_log: Path, port: int, timeout: float) -> bool:
    """Wait until nginx listens on ``port`` (True), or exits, fails to bind or ``timeout`` passes (False). nginx writes
    its pid file once its socket listens, so what answers on the port then is nginx, not a process that took the port
    first; it fails to bind 5 times, 0.5 s apart, before it exits, so its error log says so sooner."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if pid_file.exists() and pid_file.read_text().strip() == str(proc.pid) and _accepts(port):
            return True
        if error_log.exists() and "Address already in use" in error_log.read_text():
            return False
        time.sleep(0.01)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Terminate a child process, killing it if it is still there after 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------------------- S3

@contextlib.contextmanager
def serve_s3() -> Iterator[str]:
    """Run moto's S3 server (in this process, in a thread) on 127.0.0.1 while the context is open; yields its
    endpoint URL, ``http://127.0.0.1:PORT``. moto keeps its buckets in this process's memory, shared by every
    server and ``mock_aws`` here: they are wiped when a server starts."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line on stderr per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    server.start()
    endpoint = "http://127.0.0.1:%d" % server.get_host_and_port()[1]
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset", method="POST"), timeout=10).close()
        yield endpoint
    finally:
        server.stop()
        server._server.server_close()  # stop() leaves the listening socket open


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that sends boto3, aiobotocore and so s3fs to the S3 server at ``endpoint`` with no explicit
    argument: ``s3fs.S3FileSystem()`` reaches it (tests/test_servers.py checks). botocore (>= 1.31) reads the
    endpoint from AWS_ENDPOINT_URL_S3 (AWS_ENDPOINT_URL, for every service, works too) when a client is made, so it
    may be set after import; fsspec's FSSPEC_S3_ENDPOINT_URL works only if set before fsspec is imported.
    Set these with ``monkeypatch.setenv`` and unset AWS_PROFILE (a profile not in the config file is an error).
    fsspec caches filesystems by their arguments, not the environment: call ``s3fs.S3FileSystem.clear_instance_cache()``
    when the endpoint changes, or ``S3FileSystem()`` returns one still talking to the old endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_CONFIG_FILE": os.devnull,  # nothing from the developer's ~/.aws
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


@functools.lru_cache(maxsize=None)
def _s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def put_object(endpoint: str, bucket: str, key: str, path_or_bytes: Path | str | bytes) -> str:
    """Upload a file or bytes to ``s3://bucket/key`` on the S3 server at ``endpoint`` (test set-up, so boto3 with
    explicit arguments), creating the bucket if missing; returns the object's ETag (with its quotes)."""
    from botocore.exceptions import ClientError

    client = _s3_client(endpoint)
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    body = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"]


def presigned_url(endpoint: str, bucket: str, key: str) -> str:
    """A presigned GET URL of ``s3://bucket/key`` through ``endpoint`` (the S3 server, or a FaultProxy in front of
    it): moto refuses unsigned requests (403), so a plain HTTP client reads an object by this URL."""
    return _s3_client(endpoint).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})


# ---------------------------------------------------------------------------------------------------------- faults

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "content-length"}


class FaultProxy:
    """An HTTP/1.1 reverse proxy on 127.0.0.1 (``url``) in front of ``upstream`` that injects faults on demand.

    It exists because real networks drop connections, cut responses short and stall, and no server does so on
    demand. Each fault is armed for the next ``times`` responses to GET requests (HEAD and other methods pass
    unharmed, so a file's metadata still opens), in the order armed. ``requests`` counts the GETs served (forwarded
    or faulted), ``faults`` the faults served. The client's Host header is forwarded as sent (a SigV4 signature
    covers it, and nginx's redirects then point back at the proxy). A context manager: leaving it closes the proxy.
    """

    def __init__(self, upstream: str, timeout: float = 30.0):
        parts = urllib.parse.urlsplit(upstream)
        self._upstream = (parts.hostname, parts.port or 80)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._armed: list[tuple[str, float]] = []  # one (kind, parameter) per faulted GET response
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._port = 0
        self.requests = 0
        self.faults = 0
        self.up()
        self.url = f"http://127.0.0.1:{self._port}"

    def drop(self, times: int = 1, after: float = 0.5) -> None:
        """Send the status line, the headers (the true Content-Length) and the first ``after`` of the body, then
        close the connection: the client sees an incomplete payload."""
        self._arm("drop", after, times)

    def truncate(self, times: int = 1, keep: float = 0.5) -> None:
        """Send the first ``keep`` of the body (at least a byte) with Content-Length and Content-Range rewritten to
        match, keeping the connection: a well-formed but short response, invisible to the transport."""
        self._arm("truncate", keep, times)

    def delay(self, seconds: float, times: int = 1) -> None:
        """Sleep ``seconds`` before forwarding the request."""
        self._arm("delay", seconds, times)

    def fail(self, status: int = 503, times: int = 1) -> None:
        """Answer with ``status`` and a short text body instead of forwarding the request."""
        self._arm("fail", status, times)

    def down(self) -> None:
        """Close the listening socket and every open connection: connections are refused until :meth:`up`."""
        with self._lock:
            server, self._server = self._server, None
            connections = list(self._connections)
        if server is not None:
            server.shutdown()
            server.server_close()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        """Listen again, on the same port."""
        with self._lock:
            if self._server is not None:
                return
            self._server = server = _Server(("127.0.0.1", self._port), _ProxyHandler)
        server.proxy = self
        self._port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        """Stop the proxy (as :meth:`down`)."""
        self.down()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _arm(self, kind: str, parameter: float, times: int) -> None:
        with self._lock:
            self._armed += [(kind, parameter)] * times

    def _next_get(self) -> tuple[str, float] | None:
        with self._lock:
            self.requests += 1
            if not self._armed:
                return None
            self.faults += 1
            return self._armed.pop(0)

    def _forward(self, method: str, path: str, headers, body: bytes | None):
        conn = http.client.HTTPConnection(*self._upstream, timeout=self._timeout)  # one per request: simple
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def server_bind(self) -> None:  # HTTPServer's looks up the host's name, which can be slow
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client or down() closing a connection is no error
            super().handle_error(request, client_address)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: many requests per connection
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.proxy._lock:
            self.server.proxy._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.proxy._lock:
            self.server.proxy._connections.discard(self.connection)
        super().finish()

    def log_message(self, format, *args) -> None:
        pass

    def _relay(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()
        kind, parameter = (proxy._next_get() if self.command == "GET" else None) or (None, 0)
        if kind == "fail":
            return self._reply(int(parameter), "Injected fault", [("Content-Type", "text/plain")], b"FaultProxy\n")
        if kind == "delay":
            time.sleep(parameter)
        try:
            status, reason, headers, payload = proxy._forward(self.command, self.path, self.headers, body)
        except OSError as exc:
            return self._reply(502, "Bad Gateway", [("Content-Type", "text/plain")], f"{exc}\n".encode())
        if kind == "drop":
            self.close_connection = True
            return self._reply(status, reason, headers, payload[:int(len(payload) * parameter)], len(payload))
        if kind == "truncate" and payload:
            payload = payload[:max(1, int(len(payload) * parameter))]
            headers = [(k, _shorten_range(v, len(payload)) if k.lower() == "content-range" else v) for k, v in headers]
        self._reply(status, reason, headers, payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _relay

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _reply(self, status: int, reason: str, headers, payload: bytes, length: int | None = None) -> None:
        self.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        bodiless = self.command == "HEAD" or status in (204, 304) or status < 200
        if bodiless:  # the upstream's Content-Length describes the body a GET would get
            length = next((v for k, v in headers if k.lower() == "content-length"), None)
        else:
            length = len(payload) if length is None else length
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        if not bodiless:
            self.wfile.write(payload)
        self.wfile.flush()


def _shorten_range(content_range: str, length: int) -> str:
    """``bytes 10-19/100`` for ``length`` bytes from 10: ``bytes 10-(10+length-1)/100``."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\S+)", content_range.strip())
    if match is None:
        return content_range
    start = int(match.group(1))
    return f"bytes {start}-{start + length - 1}/{match.group(2)}"
