"""The kas HTTP gateway's service proxy, end to end: kasd --http-listen
http://127.0.0.1:0 -> agentd --service web=http://... -> http_upstream.py.
Transfers are made by curl, everything else by http.client or raw sockets.

errors:      401 (no, bad, wrongly signed, expired, wrong-audience and
             alg-none JWTs, each with a JSON body), 403 (agent not in the
             token's "agents"), 404 (unknown service, unknown path), 502
             (upstream down), 504 after --route-timeout 1 (agent never
             connects, ~1 s), 431 (header too large); the upstream sees
             X-Forwarded-For 127.0.0.1 and -Proto/-Host, never the
             caller's Authorization nor a hop-by-hop field; the method,
             query and a small body pass through. The expired JWT is
             minted here with an exp two hours back: a `kasctl token --ttl
             1` would need kas's 30 s leeway to pass first.
keepalive:   100 requests on one connection (the socket never changes);
             pipelining: 4 requests (one with a body) in one write, 4
             answers in order.
upload:      256 MiB chunked upload by curl -T - (Transfer-Encoding:
             chunked): the upstream counts every byte and the sha256 is
             right.
download:    1 GiB with Content-Length by curl -o file, byte-exact (sha256
             against the pattern, computed while curl runs), and 64 MiB
             chunked with irregular chunk sizes.
https:       the same over --http-listen https:// (test certificate):
             keep-alive, X-Forwarded-Proto https, 256 MiB download.
concurrent:  16 connections at once, 8 MiB each: downloads (each its own
             pattern) and Content-Length uploads, all byte-exact.
timeouts:    --http-request-timeout 1: a head trickled byte by byte is cut
             after ~1 s; --http-idle-timeout 1: an idle keep-alive
             connection is closed after ~1 s; neither cuts a response that
             streams for 3 s nor a request body that trickles for 2.5 s.
disconnect:  a client leaving mid-download of a 4 GiB body: the upstream
             is told within seconds (its connection ends) and has sent far
             less than the body; a streaming response (/slow) arrives
             before it ends and its upstream is released when the client
             leaves; kasd and agentd log the streams' ends, stay healthy
             and exit 0.
"""

import hashlib
import json
import os
import re
import select
import socket
import subprocess
import threading
import time

import harness
from harness import AGENT_ID, MiB, GiB, check, log, scaled, Pattern

UP_SEED = 0x68747470  # http_upstream.SEED: what /bytes sends by default


def svc(path, service="web", agent=AGENT_ID):
    return "/api/v1/agents/%s/services/%s%s" % (agent, service, path)


class Setup:
    def __init__(self, env, route_timeout=1, connections=2, http="http",
                 **kasd_opts):
        self.env = env
        _, token_file, tokens = env.agent_credentials()
        self.up, self.up_port = env.start_http_upstream()
        self.down_port = harness.free_port()  # nothing listens there
        self.kas = env.start_kasd(tokens, route_timeout=route_timeout,
                                  http=http, **kasd_opts)
        self.agent = env.start_agentd(
            self.kas, token_file,
            {"web": "http://127.0.0.1:%d" % self.up_port,
             "down": "http://127.0.0.1:%d" % self.down_port},
            connections=connections)
        self.token = env.token(ttl=600)
        self.auth = {"Authorization": "Bearer " + self.token}
        log("kasd http_port=%d, upstream port %d", self.kas.http_port,
            self.up_port)

    def get(self, path, headers=None, token=True, method="GET", body=None):
        h = dict(self.auth if token else {})
        h.update(headers or {})
        return harness.http_request(self.kas, method, path, h, body)

    def curl(self, args, stdin=None):
        """Starts curl against the gateway with the token; returns its
        Proc (stdout in a file)."""
        argv = ["curl", "-sS", "--fail-with-body", "-H",
                "Authorization: Bearer " + self.token] + args
        if self.kas.ca_file:
            argv[1:1] = ["--cacert", self.kas.ca_file]
        p = self.env.spawn("curl", argv, "client", stdin=stdin)
        return p


def test_errors(env):
    s = Setup(env)
    kas = s.kas

    r = s.get(svc("/status?code=204"))
    check(r.status == 204, "GET through the gateway: %r" % r)

    # 401: every way a bearer token can be wrong, each with a JSON body.
    secret = env.secret()
    now = int(time.time())
    good = harness.make_jwt(secret, harness.jwt_claims())
    r = s.get(svc("/status?code=200"), {"Authorization": "Bearer " + good},
              token=False)
    check(r.status == 200, "a JWT minted by the test with the API secret "
          "was not accepted: %r" % r)
    cases = [
        ("no Authorization", None),
        ("not a JWT", "Bearer not-a-jwt"),
        ("garbage segments", "Bearer a.b.c"),
        ("Basic scheme", "Basic dXNlcjpwYXNz"),
        ("wrong secret", "Bearer " + harness.make_jwt(
            b"x" * 32, harness.jwt_claims())),
        ("expired", "Bearer " + harness.make_jwt(
            secret, harness.jwt_claims(now=now - 7200, ttl=3600))),
        ("wrong audience", "Bearer " + harness.make_jwt(
            secret, dict(harness.jwt_claims(), aud="someone-else"))),
        ("no exp", "Bearer " + harness.make_jwt(
            secret, {k: v for k, v in harness.jwt_claims().items()
                     if k != "exp"})),
        ("alg none", "Bearer " + harness.make_jwt(
            secret, harness.jwt_claims(),
            header={"alg": "none", "typ": "JWT"}, signature="")),
        ("alg HS512 header", "Bearer " + harness.make_jwt(
            secret, harness.jwt_claims(),
            header={"alg": "HS512", "typ": "JWT"})),
    ]
    for what, authz in cases:
        r = s.get(svc("/headers"), {"Authorization": authz} if authz else {},
                  token=False)
        j = harness.check_http_error(r, 401, "unauthorized", what)
        check(secret.decode() not in r.body.decode(errors="replace"),
              "%s: the error body quotes the secret" % what)
        log("%-18s -> 401 %s", what, json.dumps(j))
    check(s.up.count_log(r"event=request ") == 2,
          "a refused request reached the upstream (%d requests)" %
          s.up.count_log(r"event=request "))

    # 403: a token limited to other agents.
    other = env.token(agents=[AGENT_ID + 1])
    r = s.get(svc("/headers"), {"Authorization": "Bearer " + other},
              token=False)
    j = harness.check_http_error(r, 403, "forbidden", "token for agent %d "
                                 "only" % (AGENT_ID + 1))
    log("token for another agent -> 403 %s", json.dumps(j))
    mine = env.token(agents=[AGENT_ID + 1, AGENT_ID])
    r = s.get(svc("/status?code=200"), {"Authorization": "Bearer " + mine},
              token=False)
    check(r.status == 200, "token listing agent %d refused: %r" %
          (AGENT_ID, r))

    # 404s and 400.
    r = s.get(svc("/x", service="nope"))
    j = harness.check_http_error(r, 404, "not_found", "unknown service")
    log("unknown service -> 404 %s", json.dumps(j))
    for path in ("/", "/nothing-here", "/api/v1/agents/%d" % AGENT_ID,
                 "/api/v2/agents/%d/services/web/x" % AGENT_ID):
        r = s.get(path)
        harness.check_http_error(r, 404, "not_found", "GET %s" % path)
    log("unknown gateway paths -> 404")
    r = s.get(svc("/x", agent="abc"))
    check(r.status in (400, 404), "agent id 'abc': %r" % r)
    harness.check_http_error(r, r.status, "bad_request" if r.status == 400
                             else "not_found", "agent id 'abc'")
    log("agent id 'abc' -> %d", r.status)

    # 502: nothing listens behind service "down".
    r = s.get(svc("/x", service="down"))
    j = harness.check_http_error(r, 502, "upstream_failed", "upstream down")
    log("upstream down -> 502 %s", json.dumps(j))

    # 504: agent 99 never connects; the request waits --route-timeout 1.
    r = s.get(svc("/x", agent=99))
    j = harness.check_http_error(r, 504, "agent_not_connected",
                                 "agent that never connects")
    log("agent 99 -> 504 after %.2f s %s", r.seconds, json.dumps(j))
    check(r.seconds >= 0.9, "504 after %.2f s, before the 1 s route "
          "timeout" % r.seconds)
    check(r.seconds < scaled(4), "504 only after %.2f s" % r.seconds)

    # 431: a 96 KiB header field.
    big = "x" * (96 * 1024)
    try:
        r = s.get(svc("/headers"), {"X-Big": big})
    except (ConnectionError, OSError) as e:
        raise harness.TestFailure(
            "a request with a 96 KiB header got no answer but %r (the "
            "gateway must answer 431 and then close without resetting "
            "the response away: read the rest or half-close first)" % e)
    j = harness.check_http_error(r, 431, "header_too_large",
                                 "96 KiB header field")
    log("96 KiB header -> 431 %s", json.dumps(j))

    # What the upstream sees: forwarded fields, no Authorization, no
    # hop-by-hop fields, method, path and query unchanged.
    r = s.get(svc("/headers?a=1&b=%20x"), {
        "X-Custom": "kept", "Connection": "keep-alive, X-Hop",
        "X-Hop": "must-not-pass", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic Zm9vOmJhcg=="},
        method="DELETE")
    check(r.status == 200, "/headers: %r" % r)
    seen = r.json()
    hdrs = {}
    for k, v in seen["headers"]:
        hdrs.setdefault(k.lower(), []).append(v)
    log("upstream saw %s %s with %s", seen["method"], seen["path"],
        sorted(hdrs))
    check(seen["method"] == "DELETE", "method %r" % seen["method"])
    check(seen["path"] == "/headers?a=1&b=%20x", "path+query %r" %
          seen["path"])
    check(hdrs.get("x-forwarded-for") == ["127.0.0.1"],
          "X-Forwarded-For %r, want ['127.0.0.1']" %
          hdrs.get("x-forwarded-for"))
    check(hdrs.get("x-forwarded-proto") == ["http"],
          "X-Forwarded-Proto %r" % hdrs.get("x-forwarded-proto"))
    check(hdrs.get("x-forwarded-host") == ["127.0.0.1:%d" % kas.http_port],
          "X-Forwarded-Host %r" % hdrs.get("x-forwarded-host"))
    check("authorization" not in hdrs, "the caller's Authorization reached "
          "the upstream")
    check("proxy-authorization" not in hdrs, "Proxy-Authorization reached "
          "the upstream")
    check("x-hop" not in hdrs, "a field listed in Connection reached the "
          "upstream")
    check("keep-alive" not in hdrs and "te" not in hdrs,
          "hop-by-hop Keep-Alive/TE reached the upstream")
    check(hdrs.get("x-custom") == ["kept"], "X-Custom %r" %
          hdrs.get("x-custom"))
    check(hdrs.get("host") == ["127.0.0.1:%d" % s.up_port],
          "Host %r, want the upstream's host:port" % hdrs.get("host"))

    # A small body with Content-Length, and HEAD.
    body = Pattern(5).make(0, 100000)
    r = s.get(svc("/upload"), method="POST", body=body)
    check(r.status == 200, "POST /upload: %r" % r)
    j = r.json()
    check(j["length"] == len(body) and
          j["sha256"] == hashlib.sha256(body).hexdigest(),
          "POST body arrived as %r" % j)
    r = s.get(svc("/bytes?n=12345"), method="HEAD")
    check(r.status == 200 and r.body == b"" and
          r.headers.get("Content-Length") == "12345",
          "HEAD: %r, Content-Length %r" % (r, r.headers.get(
              "Content-Length")))
    log("POST body and HEAD pass through")

    # Still serving after all the failures.
    r = s.get(svc("/bytes?n=1000"))
    check(r.status == 200 and r.body == Pattern(UP_SEED).make(0, 1000),
          "GET after the errors: %r" % r)
    s.agent.stop()
    kas.proc.stop()


def test_keepalive(env):
    s = Setup(env)
    conn = harness.http_connection(s.kas)
    pat = Pattern(UP_SEED)
    sock = None
    t0 = time.monotonic()
    for i in range(100):
        n = (i * 7919) % 70000
        path = svc("/%s?n=%d" % ("chunked" if i % 3 == 0 else "bytes", n))
        r = harness.http_do(conn, "GET", path, s.auth)
        check(r.status == 200, "request %d: %r" % (i, r))
        check(r.body == pat.make(0, n), "request %d: body of %d bytes "
              "differs (want %d)" % (i, len(r.body), n))
        if sock is None:
            sock = conn.sock
        check(conn.sock is sock and sock is not None,
              "request %d went over a new connection (the gateway closed "
              "the previous one; Connection: %r)" %
              (i, r.headers.get("Connection")))
    dt = time.monotonic() - t0
    # Small answers: a Nagle / delayed-ACK stall on any hop shows up as
    # ~40 ms per request.
    lat = []
    for i in range(50):
        r = harness.http_do(conn, "GET", svc("/bytes?n=13"), s.auth)
        check(r.status == 200 and len(r.body) == 13, "small %d: %r" % (i, r))
        lat.append(r.seconds)
    check(conn.sock is sock, "the small requests went over a new "
          "connection")
    conn.close()
    lat.sort()
    log("100 requests on one connection in %.2f s; 13-byte answers: "
        "median %.1f ms, p90 %.1f ms", dt, lat[25] * 1e3, lat[45] * 1e3)
    check(lat[25] < scaled(0.02), "median latency of a 13-byte answer is "
          "%.1f ms (a write stalled by Nagle's algorithm?)" % (lat[25] * 1e3))

    # Pipelining: four requests in one write, the second with a body.
    body = Pattern(9).make(0, 5000)
    a = "Authorization: Bearer %s\r\n" % s.token
    reqs = ("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (svc("/bytes?n=1000"), a)
            + "POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n"
            % (svc("/upload"), a, len(body))).encode() + body + (
        "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (svc("/chunked?n=70000"), a)
        + "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (svc("/headers"), a)
    ).encode()
    sk = harness.connect(s.kas.http_port, timeout=scaled(20))
    sk.sendall(reqs)
    rs = harness.read_responses(sk, 4)
    sk.close()
    check([r.status for r in rs] == [200] * 4, "pipelined: %r" % rs)
    check(rs[0].body == pat.make(0, 1000), "pipelined 1: wrong body")
    j = rs[1].json()
    check(j.get("length") == len(body) and
          j.get("sha256") == hashlib.sha256(body).hexdigest(),
          "pipelined 2 (POST): upstream got %r" % j)
    check(rs[2].body == pat.make(0, 70000), "pipelined 3: wrong body")
    check(rs[3].json().get("path") == "/headers", "pipelined 4: %r" %
          rs[3].body[:200])
    log("4 pipelined requests answered in order")
    s.agent.stop()
    s.kas.proc.stop()


def feed(proc, pat, n, result):
    """Writes n bytes of pat to proc's stdin, hashing them."""
    h = hashlib.sha256()
    pos = 0
    try:
        while pos < n:
            c = pat.chunk(pos, min(Pattern.BLOCK, n - pos))
            h.update(c)
            proc.stdin.write(c)
            pos += len(c)
        proc.stdin.close()
    except OSError as e:
        result["error"] = "stdin of curl after %d bytes: %r" % (pos, e)
    result["sha256"] = h.hexdigest()
    result["sent"] = pos


def test_upload(env):
    s = Setup(env)
    n = 256 * MiB
    pat = Pattern(0x75706C64)
    p = s.curl(["-T", "-", "-H", "Transfer-Encoding: chunked",
                "-w", "\\n%{http_code} %{time_total}",
                s.kas.http_url + svc("/upload")], stdin=subprocess.PIPE)
    res = {}
    t0 = time.monotonic()
    th = threading.Thread(target=feed, args=(p.popen, pat, n, res),
                          daemon=True)
    th.start()
    try:
        rc = p.popen.wait(timeout=scaled(60))
    except subprocess.TimeoutExpired:
        raise harness.TestFailure("curl upload still running after %.0f s" %
                                  scaled(60))
    dt = time.monotonic() - t0
    th.join(scaled(10))
    out = p.stdout()
    check(rc == 0, "curl upload: exit %d: %s %s" % (rc, p.stderr(), out))
    check("error" not in res, res.get("error", ""))
    body, status = out.rsplit("\n", 1)
    check(status.startswith("200 "), "upload: HTTP %s: %s" % (status, body))
    j = json.loads(body)
    log("uploaded %d MiB chunked in %.2f s (%.0f MiB/s): upstream got %d "
        "bytes, chunked=%s", n // MiB, dt, n / MiB / dt, j["length"],
        j["chunked"])
    check(j["length"] == n, "upstream received %d bytes of %d" %
          (j["length"], n))
    check(j["sha256"] == res["sha256"], "upload arrived corrupted (sha256 "
          "%s, sent %s)" % (j["sha256"], res["sha256"]))
    check(j["chunked"], "the agent sent a body of unknown length without "
          "chunked framing")
    s.agent.stop()
    s.kas.proc.stop()


def pattern_sha256(pat, n, out):
    h = hashlib.sha256()
    pos = 0
    while pos < n:
        c = pat.chunk(pos, min(Pattern.BLOCK, n - pos))
        h.update(c)
        pos += len(c)
    out["sha256"] = h.hexdigest()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def download(s, path, n, name):
    want = {}
    th = threading.Thread(target=pattern_sha256,
                          args=(Pattern(UP_SEED), n, want), daemon=True)
    th.start()
    dest = s.env.path(name)
    t0 = time.monotonic()
    p = s.curl(["-o", dest, "-w", "%{http_code} %{size_download}",
                s.kas.http_url + path])
    rc = p.wait_exit(scaled(60))
    dt = time.monotonic() - t0
    check(rc == 0, "curl download: exit %d: %s" % (rc, p.stderr()))
    code, size = p.stdout().split()
    check(code == "200", "download: HTTP %s" % code)
    check(int(size) == n and os.path.getsize(dest) == n,
          "downloaded %s bytes (file %d), want %d" %
          (size, os.path.getsize(dest), n))
    got = file_sha256(dest)
    os.unlink(dest)
    th.join(scaled(30))
    check(got == want["sha256"], "download differs from the pattern "
          "(sha256 %s, want %s)" % (got, want["sha256"]))
    log("downloaded %d MiB byte-exact in %.2f s (%.0f MiB/s)", n // MiB, dt,
        n / MiB / dt)


def test_download(env):
    s = Setup(env)
    download(s, svc("/bytes?n=%d" % GiB), GiB, "1g.bin")
    download(s, svc("/chunked?n=%d" % (64 * MiB)), 64 * MiB, "64m.bin")
    s.agent.stop()
    s.kas.proc.stop()


def test_https(env):
    s = Setup(env, http="https")
    conn = harness.http_connection(s.kas)
    pat = Pattern(UP_SEED)
    for i in range(20):
        n = (i * 104729) % 300000
        r = harness.http_do(conn, "GET", svc("/bytes?n=%d" % n), s.auth)
        check(r.status == 200 and r.body == pat.make(0, n),
              "https request %d: %r" % (i, r))
    conn.close()
    r = s.get(svc("/headers"))
    proto = [v for k, v in r.json()["headers"]
             if k.lower() == "x-forwarded-proto"]
    check(proto == ["https"], "X-Forwarded-Proto over https: %r" % proto)
    log("20 requests on one TLS connection; X-Forwarded-Proto https")
    download(s, svc("/bytes?n=%d" % (256 * MiB)), 256 * MiB, "256m.bin")
    s.agent.stop()
    s.kas.proc.stop()


def test_concurrent(env):
    s = Setup(env)
    n = 8 * MiB
    results = {}

    def one(i):
        conn = harness.http_connection(s.kas, timeout=scaled(30))
        try:
            if i % 2 == 0:
                r = harness.http_do(conn, "GET", svc("/bytes?n=%d&seed=%d" %
                                                     (n, i)), s.auth)
                ok = (r.status == 200 and
                      r.body == Pattern(i).make(0, n))
                results[i] = ok or "download %d: %r" % (i, r)
            else:
                body = Pattern(i).make(0, n)
                r = harness.http_do(conn, "POST", svc("/upload"), s.auth,
                                    body)
                ok = (r.status == 200 and r.json()["sha256"] ==
                      hashlib.sha256(body).hexdigest())
                results[i] = ok or "upload %d: %r" % (i, r)
        except Exception as e:
            results[i] = "request %d: %r" % (i, e)
        finally:
            conn.close()

    t0 = time.monotonic()
    ths = [threading.Thread(target=one, args=(i,), daemon=True)
           for i in range(16)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(scaled(60))
    bad = [v for k, v in sorted(results.items()) if v is not True]
    check(len(results) == 16, "only %d of 16 requests finished" %
          len(results))
    check(not bad, "; ".join(bad))
    log("16 concurrent 8 MiB transfers (8 down, 8 up) byte-exact in %.2f s",
        time.monotonic() - t0)
    s.agent.stop()
    s.kas.proc.stop()


def wait_eof(sock, timeout):
    """Seconds until the peer closes sock (reading and dropping what
    arrives), or None after timeout."""
    t0 = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except socket.timeout:
        return None
    except OSError:
        pass
    return time.monotonic() - t0


def test_timeouts(env):
    s = Setup(env, http_request_timeout=1, http_idle_timeout=1)

    # A request head that trickles in never completes: cut after ~1 s.
    sk = harness.connect(s.kas.http_port)
    t0 = time.monotonic()
    sk.sendall(b"GET " + svc("/headers").encode() + b" HTTP/1.1\r\nX-A: ")
    closed = None
    while time.monotonic() - t0 < scaled(5):
        r, _, _ = select.select([sk], [], [], 0.2)  # the trickle's pace
        if r:
            closed = wait_eof(sk, scaled(2)) is not None
            break
        try:
            sk.sendall(b"a")
        except OSError:
            closed = True
            break
    dt = time.monotonic() - t0
    sk.close()
    check(closed, "a head trickled for %.1f s was not cut (request "
          "timeout 1 s)" % dt)
    check(0.9 <= dt <= scaled(3), "trickled head cut after %.2f s, want "
          "~1 s" % dt)
    log("trickled request head cut after %.2f s", dt)

    # An idle keep-alive connection is closed after ~1 s.
    sk = harness.connect(s.kas.http_port)
    sk.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
                "\r\n\r\n" % (svc("/bytes?n=3"), s.token)).encode())
    r = harness.read_responses(sk, 1)[0]
    check(r.status == 200 and len(r.body) == 3, "idle case: %r" % r)
    dt = wait_eof(sk, scaled(5))
    sk.close()
    check(dt is not None, "an idle keep-alive connection stayed open %.0f "
          "s (idle timeout 1 s)" % scaled(5))
    check(0.8 <= dt <= scaled(3), "idle connection closed after %.2f s, "
          "want ~1 s" % dt)
    log("idle keep-alive connection closed after %.2f s", dt)

    # A response streaming for 3 s and a body trickling for 2.5 s are
    # not idle.
    r = s.get(svc("/slow?hold=3"))
    check(r.status == 200 and r.body == b"first\nlast\n" and
          r.seconds >= 2.9, "/slow?hold=3 with idle timeout 1: %r after "
          "%.2f s" % (r, r.seconds))
    sk = harness.connect(s.kas.http_port)
    sk.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
                "\r\nContent-Length: 10\r\n\r\n" %
                (svc("/upload"), s.token)).encode())
    for i in range(10):
        time.sleep(0.25)  # the trickle's pace, not a synchronisation
        sk.sendall(b"z")
    r = harness.read_responses(sk, 1, "POST")[0]
    sk.close()
    check(r.status == 200 and r.json()["length"] == 10,
          "body trickled for 2.5 s: %r" % r)
    log("a 3 s streaming response and a 2.5 s trickled body pass")
    s.kas.proc.wait_log(r"event=http_timeout ", 2, scaled(5))
    s.agent.stop()
    s.kas.proc.stop()


def read_head(sock, timeout):
    """Reads a response head from a raw socket; returns (status, rest of
    the bytes read after the head)."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = sock.recv(65536)
        check(b, "connection closed before a response head")
        buf += b
    head, rest = buf.split(b"\r\n\r\n", 1)
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    check(m, "bad status line %r" % head[:80])
    return int(m.group(1)), rest


def test_disconnect(env):
    s = Setup(env, connections=1)
    n = 4 * GiB
    sk = harness.connect(s.kas.http_port, timeout=scaled(20))
    sk.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
                "\r\n\r\n" % (svc("/bytes?n=%d" % n), s.token)).encode())
    status, rest = read_head(sk, scaled(20))
    check(status == 200, "download: HTTP %d" % status)
    got = len(rest)
    while got < 16 * MiB:
        b = sk.recv(MiB)
        check(b, "download ended after %d bytes" % got)
        got += len(b)
    sk.close()
    t0 = time.monotonic()
    m = s.up.wait_log(r"event=response_aborted path=/bytes sent=(\d+)", 1,
                      scaled(10))
    sent = int(m[0])
    log("client left after %d MiB; the upstream's connection ended %.2f s "
        "later after it had sent %d MiB of %d", got // MiB,
        time.monotonic() - t0, sent // MiB, n // MiB)
    check(sent < 1 * GiB, "the upstream sent %d MiB before it noticed: "
          "buffering without backpressure" % (sent // MiB))

    # A streaming response arrives before its end; leaving releases the
    # upstream.
    sk = harness.connect(s.kas.http_port, timeout=scaled(20))
    sk.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
                "\r\n\r\n" % (svc("/slow?hold=60"), s.token)).encode())
    status, rest = read_head(sk, scaled(20))
    check(status == 200, "/slow: HTTP %d" % status)
    while b"first\n" not in rest:
        b = sk.recv(4096)
        check(b, "/slow: closed before the first chunk")
        rest += b
    log("/slow: first chunk arrived while the upstream holds the rest")
    sk.close()
    s.up.wait_log(r"event=slow_end reason=client", 1, scaled(10))
    log("/slow: the upstream saw the client leave")

    # Healthy afterwards, and both daemons logged something about the
    # streams that ended early.
    r = s.get(svc("/bytes?n=100000"))
    check(r.status == 200 and r.body == Pattern(UP_SEED).make(0, 100000),
          "request after the disconnects: %r" % r)
    kas_lines = s.kas.proc.wait_log(
        r"(event=http_aborted [^\n]*agent=%d[^\n]*)" % AGENT_ID, 2,
        scaled(5))
    for ln in kas_lines:
        log("kasd: %s", ln)
    agent_lines = re.findall(r"(event=\S+ [^\n]*service=web[^\n]*"
                             r"(?:abort|reset|cancel|CANCEL)[^\n]*)",
                             s.agent.stderr())
    for ln in agent_lines[:4]:
        log("agentd: %s", ln)
    check(agent_lines, "agentd logged nothing about the streams kas reset "
          "mid-response (service web)")
    rss = harness.vmrss_kib(s.kas.proc.pid)
    log("kasd RSS %d MiB", rss // 1024)
    s.agent.stop()
    s.kas.proc.stop()


if __name__ == "__main__":
    harness.require_program("curl", "for the transfers (apt-get install "
                            "curl)")
    harness.require_program("openssl", "to make test certificates "
                            "(apt-get install openssl)")
    harness.run([test_errors, test_keepalive, test_upload, test_download,
                 test_https, test_concurrent, test_timeouts, test_disconnect],
                bound=90)
