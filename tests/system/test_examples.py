"""The embedding examples (examples/embed_client.c, examples/embed_kas.c)
run against the real daemons, so they never rot.

- embed_client: kasd + agentd with an echo service and an http service
  (http_upstream.py); the example echoes a message, makes an HTTP request
  whose status and body it prints, and lists the agents; exit 0.
- embed_kas: started with --seconds; an agentd connects to it; its stats
  lines report the agent; it drains, frees everything and exits 0 by
  itself (the agent sees the GOAWAY). With --agent-token-dir it verifies
  agent tokens with its own asynchronous verifier: a stored token
  connects, an unknown one is refused and counted.

- custom_agent (examples/custom_agent.c) behind kasd with its HTTP gateway:
  sysinfo by curl (GET on two paths -> 200 and a JSON document with the
  expected keys and values; POST -> 405 with Allow: GET); exec by
  exec_client (examples/exec_client.c): seq 2000000 byte-exact, date,
  uptime, sha256sum of 8 MiB sent on stdin, unknown command -> NOT_FOUND,
  bad counts -> PROTOCOL; backpressure: a reader that stops reading makes
  seq itself stop writing (its wchar in /proc stays put, far from the end),
  then all 10000000 lines arrive byte-exact; a caller killed mid-stream ->
  seq is killed and reaped; seq killed by a signal -> the caller sees
  UPSTREAM "killed by signal 15"; after each step the agent has no child
  left (no zombies); SIGTERM drains with a command running (it keeps
  running), a second signal stops at once: exit 0, the command is gone.
- minimal_agent (examples/minimal_agent.c): connects with the token from
  KASROUTE_AGENT_TOKEN, answers curl with "hello from NAME", prints its
  usage (exit 2) without arguments, exits 0 on SIGTERM.

EMBED_KAS, EMBED_CLIENT, CUSTOM_AGENT, EXEC_CLIENT and MINIMAL_AGENT name
the built examples (set by meson). The curl tests are skipped, loudly,
when curl is not installed (all of them: exit 77).
"""

import calendar
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time

import harness
from harness import check, log, scaled, SKIP

EXAMPLES = {}


def example(var):
    return EXAMPLES[var]


def test_embed_client(env):
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    _, http_port = env.start_http_upstream()
    kas = env.start_kasd(tokens)
    env.start_agentd(kas, token_file, {
        "echo": echo, "http": "http://127.0.0.1:%d" % http_port})
    jwt = env.token()
    argv = [example("EMBED_CLIENT"), "--kas", kas.api_url,
            "--agent", str(harness.AGENT_ID), "--path", "/headers",
            "--message", "hello through kas"]
    # The JWT goes through the environment (as the example recommends),
    # not the command line; the children inherit it.
    os.environ["KASROUTE_TOKEN"] = jwt
    p = env.spawn("embed-client", argv, "client")
    rc = p.wait_exit(scaled(40))
    out = p.stdout()
    check(rc == 0, "embed_client exited %s\nstdout: %s\nstderr: %s" %
          (rc, out, p.stderr()))
    check("echo ok: hello through kas\n" in out, "no echo line in %r" % out)
    check("http status=200 " in out, "no HTTP 200 in %r" % out)
    m = re.search(r"^(\{.*\"headers\".*\})$", out, re.M)
    check(m, "no /headers JSON body in %r" % out)
    body = json.loads(m.group(1))
    check(body.get("method") == "GET" and body.get("path") == "/headers",
          "upstream saw %r" % body)
    m = re.search(r"^agents: (.*)$", out, re.M)
    check(m, "no agent listing in %r" % out)
    ids = [a.get("id") for a in json.loads(m.group(1)).get("agents", [])]
    check(ids == [harness.AGENT_ID], "agents listed: %r" % ids)
    check(out.rstrip().endswith("embed_client ok"), "no final ok: %r" % out)
    log("embed_client: echo, HTTP 200 and the listing as expected")

    # A clear failure: an unknown service ends with exit 1 and a reason.
    p = env.spawn("embed-client-bad", argv + ["--echo", "nope"], "client")
    rc = p.wait_exit(scaled(40))
    check(rc == 1, "unknown service: exit %s (want 1)" % rc)
    check("NOT_FOUND" in p.stderr() or "NOSERVICE" in p.stderr(),
          "unknown service: reason missing in %r" % p.stderr())
    log("embed_client: unknown service -> exit 1 (%s)",
        p.stderr().strip().splitlines()[0])


def test_embed_kas(env):
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    argv = [example("EMBED_KAS"), "--agent-tokens", tokens,
            "--api-secret-file", env.secret_file,
            "--seconds", str(int(scaled(6))), "--interval-ms", "100"]
    k = env.spawn("embed-kas", argv, "daemon")
    m = k.wait_stdout(r"embed_kas ready agent_port=(\d+) api_port=(\d+)\n",
                      scaled(10))
    agent_url = "tcp://127.0.0.1:%s" % m.group(1)
    agent = env.start_agentd(agent_url, token_file, {"echo": echo},
                             connections=2)
    agent.wait_log(r"event=connected ", 2, scaled(10))
    k.wait_stdout(r"stats agents=1 agent_connections=2 ", scaled(10))
    log("embed_kas reports the agent (1 agent, 2 connections)")
    rc = k.wait_exit(scaled(30))
    out = k.stdout()
    check(rc == 0, "embed_kas exited %s: %s" % (rc, k.stderr()))
    for line in ("embed_kas stopping (--seconds elapsed)", "embed_kas drained",
                 "embed_kas stopped"):
        check(line in out, "missing %r in %r" % (line, out))
    log("embed_kas drained and exited 0 after --seconds")
    agent.stop()


def test_embed_kas_verifier(env):
    """embed_kas --agent-token-dir: the program verifies agent tokens with
    its own (asynchronous) verifier. An agent whose token is in the store
    connects under the id its file names; one with an unknown token is
    refused (counted as an auth failure) and never routed to."""
    token, token_file, _ = env.agent_credentials()
    store = os.path.join(env.dir, "token-store")
    os.mkdir(store)
    with open(os.path.join(store, "42"), "w") as f:
        f.write(token + "\n")
    with open(os.path.join(store, "7"), "w") as f:
        f.write("another-agents-token\n")
    bad_file = env.write("bad.token", "not-in-the-store")
    echo = env.start_echo()
    argv = [example("EMBED_KAS"), "--agent-token-dir", store,
            "--api-secret-file", env.secret_file,
            "--seconds", str(int(scaled(60))), "--interval-ms", "100"]
    k = env.spawn("embed-kas-verifier", argv, "daemon")
    m = k.wait_stdout(r"embed_kas ready agent_port=(\d+) api_port=(\d+)\n",
                      scaled(10))
    agent_url = "tcp://127.0.0.1:%s" % m.group(1)
    good = env.start_agentd(agent_url, token_file, {"echo": echo},
                            connections=2)
    good.wait_log(r"event=connected ", 2, scaled(10))
    k.wait_stdout(r"stats agents=1 agent_connections=2 ", scaled(10))
    log("the verifier accepted the stored token (1 agent, 2 connections)")
    bad = env.start_agentd(agent_url, bad_file, {"echo": echo},
                           connections=1)
    bad.wait_log(r"event=token_refused ", 1, scaled(10))
    k.wait_stdout(r"stats agents=1 agent_connections=2 \S+ \S+ \S+ "
                  r"auth_failures=[1-9]", scaled(10))
    log("an unknown token was refused by the verifier and counted")
    for line in (token, "another-agents-token", "not-in-the-store"):
        check(line not in k.stdout() + k.stderr(), "a token was printed")
    k.signal(signal.SIGTERM)
    rc = k.wait_exit(scaled(30))
    check(rc == 0, "embed_kas exited %s: %s" % (rc, k.stderr()))
    good.stop()
    bad.stop()


# ---------------------------------------------------------------------------
# custom_agent, exec_client and minimal_agent


def children(pid):
    """{pid: state letter} of the processes whose parent is pid (zombies
    included), from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        # "pid (comm) S ppid ...": comm may hold spaces and parentheses.
        rest = st[st.rindex(")") + 2:].split()
        if int(rest[1]) == pid:
            out[int(d)] = rest[0]
    return out


def wait_no_children(proc, what):
    harness.wait_until(lambda: not children(proc.pid), scaled(10),
                       "%s to have no child process left after %s (has %r)"
                       % (proc.name, what, children(proc.pid)))


def wchar(pid):
    """Bytes the process has written so far, or None once it is gone."""
    try:
        with open("/proc/%d/io" % pid) as f:
            for ln in f:
                if ln.startswith("wchar:"):
                    return int(ln.split()[1])
    except OSError:
        return None
    return None


def seq_bytes(n):
    return ("\n".join(map(str, range(1, n + 1))) + "\n").encode()


def curl(env, url, token, extra=()):
    """curl with the token; returns (status, headers text, body bytes)."""
    hdr = env.path("curl-%d.headers" % env.seq)
    env.seq += 1
    r = subprocess.run(["curl", "-sS", "-D", hdr, "-o", "-", "-H",
                        "Authorization: Bearer " + token] + list(extra) +
                       [url], capture_output=True, timeout=scaled(30))
    check(r.returncode == 0, "curl %s: exit %d: %s" %
          (url, r.returncode, r.stderr.decode(errors="replace")))
    with open(hdr, errors="replace") as f:
        head = f.read()
    m = re.match(r"HTTP/\S+ (\d{3})", head)
    check(m, "curl %s: no status line in %r" % (url, head))
    return int(m.group(1)), head, r.stdout


class CustomAgent:
    """kasd (with the HTTP gateway) and custom_agent connected to it."""

    def __init__(self, env, name="ca1"):
        self.env = env
        self.name = name
        _, token_file, tokens = env.agent_credentials()
        self.kas = env.start_kasd(tokens, http="http")
        before = self.kas.proc.count_log(
            r"event=agent_connected .*replica=%s " % re.escape(name))
        self.proc = env.spawn("custom-agent", [
            example("CUSTOM_AGENT"), "--kas", self.kas.agent_url,
            "--token-file", token_file, "--name", name,
            "--connections", "2"], "daemon")
        self.proc.wait_stdout(r"custom_agent running name=%s " %
                              re.escape(name), scaled(10))
        env.wait_agent(self.kas, before + 2, name=name)
        self.jwt_file = env.write("api.jwt", env.token(ttl=600))
        with open(self.jwt_file) as f:
            self.jwt = f.read().strip()

    def url(self, service, path="/"):
        return "%s/api/v1/agents/%d/services/%s%s" % (
            self.kas.http_url, harness.AGENT_ID, service, path)

    def exec_argv(self, *cmd):
        return [example("EXEC_CLIENT"), "--kas", self.kas.api_url,
                "--agent", str(harness.AGENT_ID), "--token-file",
                self.jwt_file] + list(cmd)

    def run(self, *cmd, stdin=subprocess.DEVNULL, timeout=None):
        """exec_client to completion; returns (rc, stdout bytes, stderr)."""
        p = self.env.spawn("exec-client", self.exec_argv(*cmd), "client",
                           stdin=stdin)
        rc = p.wait_exit(timeout or scaled(60))
        with open(p.stdout_path, "rb") as f:
            return rc, f.read(), p.stderr()

    def start(self, *cmd):
        """exec_client running, its stdout a pipe read by the test, and
        the pid of its command (from the agent's log; one at a time)."""
        started = r"event=exec_start command=%s pid=(\d+)" % cmd[0]
        before = self.proc.count_log(started)
        p = self.env.spawn("exec-client", self.exec_argv(*cmd), "client",
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        pids = self.proc.wait_log(started, before + 1, scaled(10))
        return p, int(pids[before])


def read_some(f, n, timeout):
    b = harness.read_exact(f, n, timeout)
    check(len(b) == n, "the output ended after %d bytes" % len(b))
    return b


def read_to_end(f, timeout):
    fd = f.fileno()
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        check(left > 0, "no end of output within %.0f s (%d bytes)" %
              (timeout, len(out)))
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        b = os.read(fd, 1 << 20)
        if not b:
            return bytes(out)
        out += b


def test_custom_agent_http(env):
    ca = CustomAgent(env)
    status, head, body = curl(env, ca.url("sysinfo"), ca.jwt)
    check(status == 200, "GET sysinfo: %d %r" % (status, body))
    check(re.search(r"(?im)^content-type: application/json\s*$", head),
          "GET sysinfo: Content-Type in %r" % head)
    doc = json.loads(body)
    log("sysinfo: %s", body.decode().strip())
    check(set(doc) == {"host", "agent", "uptime_s", "load", "time", "user"},
          "sysinfo keys: %r" % sorted(doc))
    check(doc["host"] == socket.gethostname(), "host %r, want %r" %
          (doc["host"], socket.gethostname()))
    check(doc["agent"] == ca.name, "agent %r" % doc["agent"])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    check(isinstance(doc["uptime_s"], int) and
          abs(doc["uptime_s"] - up) < 30, "uptime_s %r, /proc says %.0f" %
          (doc["uptime_s"], up))
    check(isinstance(doc["load"], list) and len(doc["load"]) == 3 and
          all(isinstance(x, (int, float)) and x >= 0 for x in doc["load"]),
          "load %r" % doc["load"])
    t = calendar.timegm(time.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ"))
    check(abs(t - time.time()) < 30, "time %r is off" % doc["time"])
    # The service gateway sends no caller identity (only the Kubernetes
    # proxy does): "user" is null.
    check(doc["user"] is None, "user %r" % doc["user"])

    status, _, body = curl(env, ca.url("sysinfo", "/any/path?x=1"), ca.jwt)
    check(status == 200 and json.loads(body)["agent"] == ca.name,
          "GET another path: %d %r" % (status, body))
    status, head, body = curl(env, ca.url("sysinfo"), ca.jwt,
                              ["-X", "POST", "--data", "x=1"])
    check(status == 405, "POST sysinfo: %d %r" % (status, body))
    check(re.search(r"(?im)^allow: GET\s*$", head), "405 without Allow: "
          "GET: %r" % head)
    check(json.loads(body).get("error") == "method not allowed",
          "405 body %r" % body)
    log("sysinfo: GET -> 200 JSON, POST -> 405 Allow: GET")
    ca.proc.stop()
    log("custom_agent exited 0 on SIGTERM")


def test_custom_agent_exec(env):
    ca = CustomAgent(env)
    n = 2000000
    t0 = time.monotonic()
    rc, out, err = ca.run("seq", str(n))
    check(rc == 0, "seq %d: exit %d: %s" % (n, rc, err))
    want = seq_bytes(n)
    if out != want:
        at = next((i for i, (a, b) in enumerate(zip(out, want)) if a != b),
                  min(len(out), len(want)))
        check(False, "seq %d: %d bytes, want %d, first difference at %d" %
              (n, len(out), len(want), at))
    log("seq %d: %d bytes byte-exact in %.2f s", n, len(out),
        time.monotonic() - t0)

    rc, date, err = ca.run("date")
    check(rc == 0 and re.fullmatch(rb".*\d\d:\d\d:\d\d.*\n", date),
          "date: exit %d, %r %s" % (rc, date, err))
    rc, out, err = ca.run("uptime")
    check(rc == 0 and b"load average" in out, "uptime: exit %d, %r %s" %
          (rc, out, err))
    log("date: %s; uptime: %s", date.decode().strip(), out.decode().strip())

    data = os.urandom(8 << 20)
    inp = env.write("input.bin", data)
    with open(inp, "rb") as f:
        rc, out, err = ca.run("sha256sum", stdin=f)
    check(rc == 0 and out == ("%s  -\n" % hashlib.sha256(data).hexdigest())
          .encode(), "sha256sum of 8 MiB: exit %d, %r %s" % (rc, out, err))
    log("sha256sum of 8 MiB sent as stream data: right")

    rc, out, err = ca.run("rm", "-rf")
    check(rc == 1 and "NOT_FOUND" in err and "unknown command" in err
          and not out, "unknown command: exit %d, %r" % (rc, err))
    log("unknown command -> %s", err.strip())
    for bad in ("0", "10000001", "12x", "-5"):
        rc, out, err = ca.run("seq", bad)
        check(rc == 1 and "PROTOCOL" in err, "seq %s: exit %d, %r" %
              (bad, rc, err))
    rc, out, err = ca.run("seq")
    check(rc == 1 and "PROTOCOL" in err, "seq without arg: %d %r" % (rc, err))
    log("seq with a bad or missing count -> %s", err.strip())
    wait_no_children(ca.proc, "the short commands")

    # Eight commands at once, each its own count: every output exact.
    counts = [100000 + 37 * k for k in range(8)]
    procs = [ca.env.spawn("exec-client", ca.exec_argv("seq", str(c)),
                          "client", stdin=subprocess.DEVNULL)
             for c in counts]
    for c, p in zip(counts, procs):
        rc = p.wait_exit(scaled(60))
        with open(p.stdout_path, "rb") as f:
            out = f.read()
        check(rc == 0 and out == seq_bytes(c), "concurrent seq %d: exit %d,"
              " %d bytes: %s" % (c, rc, len(out), p.stderr()))
    log("8 concurrent seq commands: all byte-exact")
    wait_no_children(ca.proc, "the concurrent commands")
    check(ca.proc.count_log(r"event=exec_start ") ==
          ca.proc.count_log(r"event=exec_exit "), "starts and exits differ")

    # Backpressure: the reader stops; seq must stop writing long before
    # its end (the buffers on the way are bounded), then go on.
    n = 10000000
    want = seq_bytes(n)
    p, pid = ca.start("seq", str(n))
    first = read_some(p.popen.stdout, 1 << 20, scaled(20))
    last = [wchar(pid), time.monotonic()]

    def stalled():
        w = wchar(pid)
        if w != last[0]:
            last[:] = [w, time.monotonic()]
            return False
        return time.monotonic() - last[1] >= 0.5
    harness.wait_until(stalled, scaled(30), "seq to stop writing while "
                       "nobody reads (wchar %s)" % last[0])
    check(last[0] is not None and last[0] < len(want) // 2,
          "seq wrote %s of %d bytes with the reader stopped" %
          (last[0], len(want)))
    check(children(ca.proc.pid).get(pid) in ("S", "D"),
          "seq is not blocked: %r" % children(ca.proc.pid))
    log("reader stopped after 1 MiB: seq blocked after writing %.1f MiB of "
        "%.1f MiB", last[0] / (1 << 20), len(want) / (1 << 20))
    t0 = time.monotonic()
    rest = read_to_end(p.popen.stdout, scaled(60))
    rc = p.wait_exit(scaled(10))
    check(rc == 0, "seq %d: exit %d: %s" % (n, rc, p.stderr()))
    check(first + rest == want, "seq %d after the pause: %d bytes, want %d" %
          (n, len(first) + len(rest), len(want)))
    log("the rest arrived byte-exact (%d bytes, %.2f s)", len(want),
        time.monotonic() - t0)
    wait_no_children(ca.proc, "the paused seq")

    # The caller goes away mid-stream: seq is killed and reaped.
    p, pid = ca.start("seq", str(n))
    read_some(p.popen.stdout, 1 << 16, scaled(20))
    check(pid in children(ca.proc.pid), "seq %d is not running" % pid)
    p.kill9()
    ca.proc.wait_log(r"event=exec_kill pid=%d " % pid, 1, scaled(10))
    harness.wait_until(lambda: pid not in children(ca.proc.pid), scaled(10),
                       "seq (pid %d) to be killed and reaped" % pid)
    log("caller killed mid-stream: seq (pid %d) killed and reaped; %s", pid,
        ca.proc.wait_log(r"event=exec_kill pid=%d (.*)" % pid)[0])

    # The command dies of a signal: the caller sees UPSTREAM.
    p, pid = ca.start("seq", str(n))
    read_some(p.popen.stdout, 1 << 16, scaled(20))
    os.kill(pid, signal.SIGTERM)  # the agent's child: known by its pid
    read_to_end(p.popen.stdout, scaled(30))
    rc = p.wait_exit(scaled(10))
    check(rc == 1 and "UPSTREAM" in p.stderr() and
          "killed by signal 15" in p.stderr(),
          "seq killed: exit %d, %r" % (rc, p.stderr()))
    log("seq killed by SIGTERM -> %s", p.stderr().strip())
    wait_no_children(ca.proc, "the killed seq")

    # SIGTERM drains: a running command keeps going (its stream may
    # finish); a second signal stops at once and takes the command along.
    p, pid = ca.start("seq", str(n))
    read_some(p.popen.stdout, 1 << 16, scaled(20))
    ca.proc.signal(signal.SIGTERM)
    ca.proc.wait_log(r"event=draining ", 1, scaled(10))
    check(pid in children(ca.proc.pid), "seq gone at the start of the drain")
    ca.proc.signal(signal.SIGINT)
    rc = ca.proc.wait_exit(scaled(15))
    check(rc == 0, "custom_agent: exit %d after SIGTERM, SIGINT" % rc)
    check(not os.path.exists("/proc/%d" % pid), "seq (pid %d) outlived the "
          "agent" % pid)
    log("SIGTERM drained with seq running, SIGINT stopped: exit 0, seq gone")
    # The client, blocked writing to the pipe nobody reads, ends when its
    # reader goes away (EPIPE).
    p.popen.stdout.close()
    rc = p.wait_exit(scaled(10))
    check(rc == 1, "exec_client after its reader left: exit %d" % rc)


def test_minimal_agent(env):
    r = subprocess.run([example("MINIMAL_AGENT")], capture_output=True,
                       timeout=scaled(10))
    check(r.returncode == 2 and b"usage" in r.stderr,
          "minimal_agent without arguments: exit %d, %r" %
          (r.returncode, r.stderr))
    token, _, tokens = env.agent_credentials()
    kas = env.start_kasd(tokens, http="http")
    os.environ["KASROUTE_AGENT_TOKEN"] = token  # inherited by the child
    try:
        p = env.spawn("minimal-agent", [example("MINIMAL_AGENT"),
                                        kas.agent_url, "mini"], "daemon")
    finally:
        del os.environ["KASROUTE_AGENT_TOKEN"]
    env.wait_agent(kas, 2, name="mini")
    url = "%s/api/v1/agents/%d/services/hello/" % (kas.http_url,
                                                   harness.AGENT_ID)
    status, head, body = curl(env, url, env.token())
    check(status == 200 and body == b"hello from mini\n",
          "GET hello: %d %r" % (status, body))
    log("minimal_agent: GET hello -> %d %r", status, body)
    p.stop()
    log("minimal_agent exited 0 on SIGTERM")


NEED_CURL = ("custom_agent_http", "minimal_agent")


if __name__ == "__main__":
    for var in ("EMBED_KAS", "EMBED_CLIENT", "CUSTOM_AGENT", "EXEC_CLIENT",
                "MINIMAL_AGENT"):
        p = os.environ.get(var)
        if not p or not os.access(p, os.X_OK):
            print("SKIP: %s is not set to an executable (got %r)" % (var, p))
            sys.exit(SKIP)
        EXAMPLES[var] = os.path.abspath(p)
    tests = [test_embed_client, test_embed_kas, test_embed_kas_verifier,
             test_custom_agent_http,
             test_custom_agent_exec, test_minimal_agent]
    if not shutil.which("curl"):
        print("SKIP: curl is not on PATH: %s not run (apt-get install curl)"
              % ", ".join(NEED_CURL))
        print("SKIP: " + "*" * 60)
        tests = [t for t in tests
                 if t.__name__.replace("test_", "", 1) not in NEED_CURL]
        sel = sys.argv[1:]
        if sel and all(s in NEED_CURL for s in sel):
            sys.exit(SKIP)
        sys.argv[1:] = [s for s in sel if s not in NEED_CURL] or []
    harness.run(tests, bound=150)
