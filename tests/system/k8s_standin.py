"""A Kubernetes API server stand-in for the system tests (standard library
only).

It answers just enough of the API for kubectl 1.32 to list, watch and exec
into pods of the "default" namespace, and it checks who is asking: every
request must carry "Authorization: Bearer <token>" (the agent's own
service-account token) and exactly the Impersonate-User / Impersonate-Group
fields the test expects (the caller's identity, added by the agent). Every
deviation is recorded in .violations; a test fails on any.

Served (plain HTTP/1.1 with keep-alive; optionally TLS for running kubectl
against it directly):
  GET /version, /api, /apis, /api/v1      version and legacy discovery
  GET /api/v1/namespaces/default/pods     a PodList of pod-a and pod-b
      ?watch=1|true                       a chunked stream of watch events:
                                          ADDED per pod, MODIFIED pod-a
                                          after a short delay, then held
                                          open until the client leaves or
                                          hold seconds pass
  GET /api/v1/namespaces/default/pods/NAME
  GET|POST /api/v1/namespaces/default/pods/NAME/exec  with Upgrade:
      websocket and subprotocol v5.channel.k8s.io (what kubectl 1.32
      speaks): stdin (channel 0) is echoed on stdout (channel 1); when the
      client closes stdin (channel 255, payload 0) a Success status goes
      out on channel 3 and the WebSocket is closed. This is "cat".

WebSocket framing (RFC 6455) is written here by hand, minimal on purpose:
client frames must be masked (an unmasked one is a violation), server
frames are not; pings are answered; fragmented messages are reassembled.

Run as a program for manual checks:
  python3 k8s_standin.py --token T [--user U --group G...] [--tls CERT KEY]
prints "port N" and serves until interrupted.
"""

import base64
import hashlib
import http.server
import json
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
EXEC_PROTOCOL = "v5.channel.k8s.io"
NAMESPACE = "default"
PODS = ("pod-a", "pod-b")
MAX_WS_MESSAGE = 1 << 20  # bounds what a misbehaving client can make us hold
CREATED = "2024-01-01T00:00:00Z"


def pod(name, rv, phase="Running", labels=None):
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": "00000000-0000-4000-8000-%012d" % (PODS.index(name) + 1),
            "resourceVersion": str(rv),
            "creationTimestamp": CREATED,
            "labels": labels or {"app": "standin"},
        },
        "spec": {
            "containers": [{"name": "main", "image": "busybox"}],
            "nodeName": "node-1",
        },
        "status": {
            "phase": phase,
            "containerStatuses": [{
                "name": "main", "ready": True, "restartCount": 0,
                "image": "busybox", "imageID": "", "started": True,
                "state": {"running": {"startedAt": CREATED}},
            }],
        },
    }


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code}


DISCOVERY = {
    "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0-standin",
                 "gitCommit": "0", "gitTreeState": "clean",
                 "buildDate": CREATED, "goVersion": "go1.23",
                 "compiler": "gc", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [
                 {"clientCIDR": "0.0.0.0/0",
                  "serverAddress": "127.0.0.1:6443"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1",
                "resources": [
                    {"name": "pods", "singularName": "pod",
                     "namespaced": True, "kind": "Pod",
                     "verbs": ["get", "list", "watch"],
                     "shortNames": ["po"], "categories": ["all"]},
                    {"name": "pods/exec", "singularName": "",
                     "namespaced": True, "kind": "PodExecOptions",
                     "verbs": ["create", "get"]},
                    {"name": "namespaces", "singularName": "namespace",
                     "namespaced": False, "kind": "Namespace",
                     "verbs": ["get", "list"], "shortNames": ["ns"]},
                ]},
}


class Standin:
    """The server. expect(user, groups) sets the identity every following
    request must carry; start() returns the port."""

    def __init__(self, token, user=None, groups=(), hold=30.0,
                 modify_delay=0.3, tls=None, verbose=False):
        self.token = token
        self.hold = hold
        self.modify_delay = modify_delay
        self.tls = tls  # (cert, key) or None
        self.verbose = verbose
        self.lock = threading.Lock()
        self.expect_user = user
        self.expect_groups = list(groups)
        self.violations = []
        self.requests = []      # dicts: method, path, user, groups, upgrade
        self.watches_ended = []  # "client" or "timeout" per finished watch
        self.execs = []          # dicts: stdin bytes, status sent
        self.stopping = threading.Event()
        self.server = None
        self.thread = None

    # -- expectations and findings ---------------------------------------
    def expect(self, user, groups=()):
        with self.lock:
            self.expect_user = user
            self.expect_groups = list(groups)

    def violation(self, text):
        with self.lock:
            self.violations.append(text)
        if self.verbose:
            print("VIOLATION " + text, file=sys.stderr)

    def seen(self, pred=lambda r: True):
        with self.lock:
            return [r for r in self.requests if pred(r)]

    # -- lifetime ---------------------------------------------------------
    def start(self):
        standin = self

        class Handler(_Handler):
            pass
        Handler.standin = standin
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls[0], self.tls[1])
            ctx.set_alpn_protocols(["http/1.1"])
            self.server.socket = ctx.wrap_socket(self.server.socket,
                                                 server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()
        return self.server.server_address[1]

    def stop(self):
        self.stopping.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Heads and bodies go out in separate writes: without this, Nagle
    # plus the peer's delayed ACK add ~40 ms to every small response.
    disable_nagle_algorithm = True
    standin = None  # set on a per-server subclass

    def log_message(self, fmt, *args):
        if self.standin.verbose:
            sys.stderr.write("standin: " + (fmt % args) + "\n")

    def do_GET(self):
        self.dispatch()

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_PATCH(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    # -- checks -----------------------------------------------------------
    def check_identity(self, path):
        s = self.standin
        auth = self.headers.get_all("Authorization") or []
        users = self.headers.get_all("Impersonate-User") or []
        groups = self.headers.get_all("Impersonate-Group") or []
        upgrade = (self.headers.get("Upgrade") or "").lower()
        with s.lock:
            s.requests.append({"method": self.command, "path": self.path,
                               "user": users, "groups": groups,
                               "upgrade": upgrade})
            want_user, want_groups = s.expect_user, s.expect_groups
        what = "%s %s" % (self.command, path)
        if auth != ["Bearer " + s.token]:
            s.violation("%s: authorization is not the agent's bearer token "
                        "(%d field(s)%s)" % (
                            what, len(auth),
                            ", a Bearer of another token"
                            if auth and auth[0].startswith("Bearer ")
                            else ""))
        if want_user is not None:
            if users != [want_user]:
                s.violation("%s: impersonate-user %r, want [%r]" %
                            (what, users, want_user))
            if groups != want_groups:
                s.violation("%s: impersonate-group %r, want %r" %
                            (what, groups, want_groups))
        for name in self.headers.keys():
            low = name.lower()
            if (low.startswith("impersonate-") and
                    low not in ("impersonate-user", "impersonate-group")):
                s.violation("%s: unexpected field %s" % (what, name))

    # -- responses ----------------------------------------------------------
    def drain_body(self):
        n = self.headers.get("Content-Length")
        if n is not None:
            left = int(n)
            while left > 0:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    break
                left -= len(b)
        elif "chunked" in (self.headers.get("Transfer-Encoding") or
                           "").lower():
            while True:
                ln = self.rfile.readline(1024)
                size = int(ln.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n",
                                                            b""):
                        pass
                    break
                self.rfile.read(size + 2)

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def dispatch(self):
        u = urllib.parse.urlsplit(self.path)
        path = u.path
        query = urllib.parse.parse_qs(u.query)
        self.check_identity(path)
        upgrade = (self.headers.get("Upgrade") or "").lower()
        prefix = "/api/v1/namespaces/%s/pods" % NAMESPACE
        if path.startswith(prefix + "/") and path.endswith("/exec"):
            name = path[len(prefix) + 1:-len("/exec")]
            if name not in PODS:
                self.drain_body()
                return self.send_json(404, status(404, "NotFound",
                                                  "pods %r not found" % name))
            if upgrade == "websocket":
                return self.exec_websocket(name, query)
            self.standin.violation("exec without a WebSocket upgrade "
                                   "(Upgrade: %r)" % upgrade)
            self.drain_body()
            return self.send_json(400, status(400, "BadRequest",
                                              "upgrade required"))
        self.drain_body()
        if self.command != "GET":
            return self.send_json(405, status(405, "MethodNotAllowed",
                                              "not supported"))
        if path in DISCOVERY:
            return self.send_json(200, DISCOVERY[path])
        if path == prefix:
            if query.get("watch", [""])[0] in ("1", "true"):
                return self.watch()
            return self.send_json(200, {
                "kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": "10"},
                "items": [pod(n, 10) for n in PODS]})
        if path.startswith(prefix + "/") and path[len(prefix) + 1:] in PODS:
            return self.send_json(200, pod(path[len(prefix) + 1:], 10))
        return self.send_json(404, status(404, "NotFound",
                                          "the server could not find the "
                                          "requested resource"))

    # -- watch --------------------------------------------------------------
    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def client_gone(self, timeout):
        """Waits up to timeout for the client to close (EOF or error on
        the socket); True if it did."""
        r, _, _ = select.select([self.connection], [], [], timeout)
        if not r:
            return False
        try:
            b = self.connection.recv(4096, socket.MSG_PEEK)
        except ValueError:
            # TLS sockets cannot peek; nothing else is due on a watch's
            # connection, so reading a byte is harmless.
            try:
                b = self.connection.recv(1)
            except ssl.SSLWantReadError:
                return False
            except OSError:
                return True
        except OSError:
            return True
        if not b:
            return True
        # Bytes arrived (a pipelined request?): not ours to read here.
        time.sleep(min(timeout, 0.05))
        return False

    def watch(self):
        s = self.standin
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for n in PODS:
                self.chunk(json.dumps({"type": "ADDED",
                                       "object": pod(n, 10)}).encode() +
                           b"\n")
            if self.client_gone(s.modify_delay):
                s.watches_ended.append("client")
                self.close_connection = True
                return
            self.chunk(json.dumps({"type": "MODIFIED", "object": pod(
                "pod-a", 11, labels={"app": "standin",
                                     "touched": "yes"})}).encode() + b"\n")
            deadline = time.monotonic() + s.hold
            while time.monotonic() < deadline and not s.stopping.is_set():
                if self.client_gone(min(0.2, deadline - time.monotonic())):
                    s.watches_ended.append("client")
                    self.close_connection = True
                    return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            s.watches_ended.append("timeout")
        except OSError:
            s.watches_ended.append("client")
            self.close_connection = True

    # -- exec over WebSocket -------------------------------------------------
    def exec_websocket(self, name, query):
        s = self.standin
        self.close_connection = True
        self.drain_body()
        key = self.headers.get("Sec-WebSocket-Key")
        offered = [p.strip() for p in
                   ",".join(self.headers.get_all("Sec-WebSocket-Protocol") or
                            []).split(",") if p.strip()]
        conn_tokens = [t.strip().lower() for t in
                       (self.headers.get("Connection") or "").split(",")]
        if not key or "upgrade" not in conn_tokens:
            s.violation("exec: WebSocket handshake without key or "
                        "Connection: upgrade (%r)" % conn_tokens)
            return self.send_json(400, status(400, "BadRequest",
                                              "bad websocket handshake"))
        if EXEC_PROTOCOL not in offered:
            s.violation("exec: client did not offer %s (offered %r)" %
                        (EXEC_PROTOCOL, offered))
            return self.send_json(400, status(400, "BadRequest",
                                              "unsupported protocol"))
        if query.get("command") != ["cat"]:
            s.violation("exec: command %r, want ['cat']" %
                        query.get("command"))
        accept = base64.b64encode(hashlib.sha1(
            (key + WS_GUID).encode()).digest()).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", EXEC_PROTOCOL)
        self.end_headers()
        self.wfile.flush()
        record = {"pod": name, "stdin": b"", "status_sent": False,
                  "closed_by": None}
        with s.lock:
            s.execs.append(record)
        ws = _WebSocket(self.connection, self.rfile, self.wfile, s)
        try:
            while not s.stopping.is_set():
                msg = ws.read_message()
                if msg is None:
                    record["closed_by"] = "client-eof"
                    return
                op, data = msg
                if op == 0x8:
                    ws.send(0x8, data[:2] or struct.pack("!H", 1000))
                    record["closed_by"] = "client-close"
                    return
                if op != 0x2 or not data:
                    continue  # text or empty messages carry nothing here
                ch, payload = data[0], data[1:]
                if ch == 0:
                    record["stdin"] += payload
                    if payload:
                        ws.send(0x2, b"\x01" + payload)
                elif ch == 255:
                    if payload[:1] != b"\x00":
                        continue  # stdout/stderr close: nothing to do
                    ws.send(0x2, b"\x03" + json.dumps(
                        {"metadata": {}, "status": "Success"}).encode())
                    record["status_sent"] = True
                    ws.send(0x8, struct.pack("!H", 1000))
                    # Wait (bounded) for the client's close frame or EOF.
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:
                        m = ws.read_message(timeout=deadline -
                                            time.monotonic())
                        if m is None or m[0] == 0x8:
                            break
                    record["closed_by"] = "server"
                    return
        except (OSError, ValueError) as e:
            record["closed_by"] = "error: %r" % e


class _WebSocket:
    """Server side of RFC 6455 over a handler's buffered streams."""

    def __init__(self, sock, rfile, wfile, standin):
        self.sock = sock
        self.rfile = rfile
        self.wfile = wfile
        self.standin = standin

    def _read(self, n):
        b = self.rfile.read(n)
        if b is None or len(b) != n:
            raise EOFError
        return b

    def read_frame(self):
        h = self._read(2)
        fin, op = h[0] & 0x80, h[0] & 0x0F
        masked, ln = h[1] & 0x80, h[1] & 0x7F
        if ln == 126:
            ln = struct.unpack("!H", self._read(2))[0]
        elif ln == 127:
            ln = struct.unpack("!Q", self._read(8))[0]
        if ln > MAX_WS_MESSAGE:
            raise ValueError("WebSocket frame of %d bytes" % ln)
        if not masked:
            self.standin.violation("exec: unmasked client frame")
            mask = b"\0\0\0\0"
        else:
            mask = self._read(4)
        data = bytearray(self._read(ln))
        for i in range(ln):
            data[i] ^= mask[i & 3]
        return bool(fin), op, bytes(data)

    def read_message(self, timeout=None):
        """(opcode, payload) of the next data or close message, answering
        pings on the way; None on EOF or when timeout passes first (the
        streams are unusable after a timeout: only for the final wait)."""
        buf, first_op = b"", None
        if timeout is not None:
            self.sock.settimeout(max(0.01, timeout))
        try:
            while True:
                fin, op, data = self.read_frame()
                if op == 0x9:
                    self.send(0xA, data)
                    continue
                if op == 0xA:
                    continue
                if op == 0x8:
                    return op, data
                if op != 0x0:
                    first_op, buf = op, data
                else:
                    buf += data
                if len(buf) > MAX_WS_MESSAGE:
                    raise ValueError("WebSocket message too large")
                if fin:
                    return first_op, buf
        except (EOFError, TimeoutError, socket.timeout):
            return None

    def send(self, op, data):
        n = len(data)
        if n < 126:
            h = struct.pack("!BB", 0x80 | op, n)
        elif n < 65536:
            h = struct.pack("!BBH", 0x80 | op, 126, n)
        else:
            h = struct.pack("!BBQ", 0x80 | op, 127, n)
        self.wfile.write(h + data)
        self.wfile.flush()


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--token", required=True)
    ap.add_argument("--user")
    ap.add_argument("--group", action="append", default=[])
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--hold", type=float, default=30.0)
    a = ap.parse_args(argv)
    s = Standin(a.token, a.user, a.group, hold=a.hold, tls=a.tls,
                verbose=True)
    print("port %d" % s.start(), flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        done.wait()
    finally:
        s.stop()
        print("violations: %r" % s.violations, file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
