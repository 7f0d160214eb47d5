"""An HTTP/1.1 upstream for the gateway system tests (standard library
only). Run as a program; it prints "port N" on stdout once it listens on
127.0.0.1 and logs one key=value line per event on stderr:

  event=request method=M path=P           every request head
  event=upload length=N sha256=H chunked=0|1
  event=response_done path=P sent=N
  event=response_aborted path=P sent=N    the client left mid-body
  event=slow_end reason=client|timeout

Endpoints (any method unless noted):
  /bytes?n=N[&seed=S]    N bytes of harness.Pattern(S) from offset 0, with
                         Content-Length (S defaults to SEED below)
  /chunked?n=N[&seed=S]  the same bytes, chunked, chunk sizes cycling
                         through CHUNK_SIZES (exercises chunk framing)
  /upload                reads the body (Content-Length or chunked),
                         answers JSON {"length", "sha256", "chunked"}
  /slow[?hold=S]         a chunked response: one chunk "first\\n", then
                         nothing until the client leaves or S seconds
                         (default 30) pass, then "last\\n" and the end
  /headers               JSON {"method", "path", "headers": [[name,
                         value], ...]} in the order received
  /status?code=N         an empty response with that status
"""

import hashlib
import http.server
import json
import os
import select
import socket
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Pattern  # noqa: E402

SEED = 0x68747470
CHUNK_SIZES = (1, 7, 100, 4096, 65536, 1 << 20)
IO = 1 << 20
MAX_N = 1 << 40  # bounds n so a typo cannot make the server loop forever

_patterns = {}
_plock = threading.Lock()
_wlock = threading.Lock()


def pattern(seed):
    with _plock:
        if seed not in _patterns:
            _patterns[seed] = Pattern(seed)
        return _patterns[seed]


def emit(event, **kv):
    line = "event=%s%s\n" % (event, "".join(" %s=%s" % (k, v)
                                            for k, v in kv.items()))
    with _wlock:
        sys.stderr.write(line)
        sys.stderr.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Heads and bodies go out in separate writes: without this, Nagle
    # plus the peer's delayed ACK add ~40 ms to every small response.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass  # our own key=value lines only

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    # -- request bodies ------------------------------------------------------
    def body_chunks(self):
        """Yields the request body in pieces (Content-Length or chunked)."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                ln = self.rfile.readline(4096)
                if not ln.endswith(b"\n"):
                    raise ValueError("bad chunk line")
                size = int(ln.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers up to the empty line
                        t = self.rfile.readline(4096)
                        if t in (b"\r\n", b"\n", b""):
                            return
                while size > 0:
                    b = self.rfile.read(min(size, IO))
                    if not b:
                        raise ValueError("body ended early")
                    size -= len(b)
                    yield b
                if self.rfile.readline(4) not in (b"\r\n", b"\n"):
                    raise ValueError("chunk without CRLF")
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                b = self.rfile.read(min(left, IO))
                if not b:
                    raise ValueError("body ended early")
                left -= len(b)
                yield b

    def drain(self):
        for _ in self.body_chunks():
            pass

    # -- responses -----------------------------------------------------------
    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def client_gone(self, timeout):
        r, _, _ = select.select([self.connection], [], [], timeout)
        if not r:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def dispatch(self):
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        emit("request", method=self.command, path=u.path)

        def num(name, default):
            v = int(q.get(name, [default])[0])
            if v < 0 or v > MAX_N:
                raise ValueError("%s out of range" % name)
            return v
        try:
            if u.path == "/upload":
                return self.upload()
            self.drain()
            if u.path == "/bytes":
                return self.bytes_(num("n", 0), num("seed", SEED), False)
            if u.path == "/chunked":
                return self.bytes_(num("n", 0), num("seed", SEED), True)
            if u.path == "/slow":
                return self.slow(num("hold", 30))
            if u.path == "/headers":
                return self.send_json(200, {
                    "method": self.command, "path": self.path,
                    "headers": [[k, v] for k, v in self.headers.items()]})
            if u.path == "/status":
                self.send_response(num("code", 200))
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            return self.send_json(404, {"error": "no such path"})
        except ValueError as e:
            emit("bad_request", reason=str(e).replace(" ", "_"))
            self.close_connection = True
            return self.send_json(400, {"error": str(e)})

    def upload(self):
        h = hashlib.sha256()
        n = 0
        chunked = "chunked" in (self.headers.get("Transfer-Encoding") or
                                "").lower()
        for b in self.body_chunks():
            h.update(b)
            n += len(b)
        emit("upload", length=n, sha256=h.hexdigest(), chunked=int(chunked))
        return self.send_json(200, {"length": n, "sha256": h.hexdigest(),
                                    "chunked": chunked})

    def bytes_(self, n, seed, chunked):
        pat = pattern(seed)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        sent, i = 0, 0
        try:
            while sent < n:
                k = min(n - sent, CHUNK_SIZES[i % len(CHUNK_SIZES)]
                        if chunked else IO, Pattern.BLOCK)
                c = pat.chunk(sent, k)
                if chunked:
                    self.wfile.write(b"%x\r\n" % k)
                    self.wfile.write(c)
                    self.wfile.write(b"\r\n")
                else:
                    self.wfile.write(c)
                sent += k
                i += 1
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            emit("response_aborted", path=self.path.split("?")[0], sent=sent)
            return
        emit("response_done", path=self.path.split("?")[0], sent=sent)

    def slow(self, hold):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self.wfile.write(b"6\r\nfirst\n\r\n")
            deadline = time.monotonic() + hold
            while time.monotonic() < deadline:
                if self.client_gone(min(0.2, deadline - time.monotonic())):
                    self.close_connection = True
                    emit("slow_end", reason="client")
                    return
            self.wfile.write(b"5\r\nlast\n\r\n0\r\n\r\n")
            emit("slow_end", reason="timeout")
        except OSError:
            self.close_connection = True
            emit("slow_end", reason="client")


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print("port %d" % srv.server_address[1], flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
