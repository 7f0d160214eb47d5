"""Shared helpers for the libkasroute system tests.

The tests drive the real programs (kasd, agentd, kasctl and the echo
upstream) over loopback sockets. Every test function gets an Env: a private
temporary directory, the processes it started (tracked by pid, never looked
up by name), their stderr logs and a cleanup that always runs.

Synchronisation is by observable state only: a ready line on stdout, a log
line on stderr, a socket that closes. Waiting means polling a condition
against a deadline; there are no fixed sleeps standing in for "it is
probably ready by now".

Environment:
  KASD, AGENTD, KASCTL, ECHO_SERVER  paths of the built programs (required)
  VALGRIND=1   run kasd and agentd under valgrind memcheck; a leak or an
               error reported at exit fails the test
  SANITIZED=1  the programs carry ASan/UBSan (set by meson); only widens
               the time bounds, reports are detected on stderr either way
  KEEP_TMP=1   keep the temporary directories of failed tests
"""

import base64
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

SKIP = 77  # meson's "skipped" exit status

VALGRIND = os.environ.get("VALGRIND") == "1"
SANITIZED = os.environ.get("SANITIZED") == "1"
# Everything slows down under valgrind (~10-30x CPU) and somewhat under
# ASan; time bounds that are not themselves under test are scaled by this.
SLOW = 10.0 if VALGRIND else (2.0 if SANITIZED else 1.0)

SANITIZER_MARKERS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: AddressSanitizer",
)

AGENT_ID = 7
MiB = 1 << 20
GiB = 1 << 30


class TestFailure(Exception):
    pass


class TestTimeout(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def scaled(seconds):
    return seconds * SLOW


def wait_until(cond, timeout, what, interval=0.02):
    """Polls cond() until it returns a true value (which is returned) or
    the deadline passes (TestFailure naming what was awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TestFailure("timed out after %.1f s waiting for %s" %
                              (timeout, what))
        time.sleep(interval)


PROGRAMS = ("KASD", "AGENTD", "KASCTL", "ECHO_SERVER")


def programs():
    """The programs under test from the environment; exits with SKIP when
    one is missing (checked once, before any test runs)."""
    out = {}
    for var in PROGRAMS:
        p = os.environ.get(var)
        if not p or not os.access(p, os.X_OK):
            print("SKIP: %s is not set to an executable (got %r)" % (var, p))
            sys.exit(SKIP)
        out[var] = os.path.abspath(p)
    if VALGRIND and not shutil.which("valgrind"):
        print("SKIP: VALGRIND=1 but valgrind is not installed")
        sys.exit(SKIP)
    return out


class Pattern:
    """A deterministic pseudo-random byte stream: a seeded random block
    read cyclically from a per-stream start offset. Streams with different
    offsets carry different bytes, so data crossing between streams or
    arriving out of order is detected."""

    BLOCK = 1 << 20

    def __init__(self, seed):
        self.seed = seed
        blk = random.Random(seed).randbytes(self.BLOCK)
        self.twice = memoryview(blk + blk)

    def chunk(self, pos, n):
        """n (<= BLOCK) bytes of the stream starting at absolute position
        pos, as a memoryview (no copy)."""
        o = pos % self.BLOCK
        return self.twice[o:o + n]

    def make(self, start, n):
        """Materialises n bytes from position start."""
        out = bytearray()
        pos = start
        while len(out) < n:
            k = min(self.BLOCK, n - len(out))
            out += self.chunk(pos, k)
            pos += k
        return bytes(out)


class Proc:
    """One child process with stdout and stderr in files of the test dir."""

    def __init__(self, env, name, argv, kind, stdin=None, stdout=None,
                 valgrind=False):
        self.env = env
        self.name = name
        self.kind = kind  # "daemon", "client" or "helper"
        self.stdout_path = os.path.join(env.dir, name + ".out")
        self.stderr_path = os.path.join(env.dir, name + ".err")
        self.vg_path = None
        if valgrind:
            self.vg_path = os.path.join(env.dir, name + ".vg")
            argv = ["valgrind", "--leak-check=full",
                    "--errors-for-leak-kinds=definite,indirect",
                    "--error-exitcode=99", "--log-file=" + self.vg_path
                    ] + list(argv)
        self.argv = argv
        self.expect_killed = False
        self.rc = None
        out = subprocess.PIPE if stdout == subprocess.PIPE else open(
            self.stdout_path, "wb")
        err = open(self.stderr_path, "wb")
        try:
            self.popen = subprocess.Popen(argv, stdin=stdin, stdout=out,
                                          stderr=err, cwd=env.dir,
                                          start_new_session=True)
        finally:
            if out is not subprocess.PIPE:
                out.close()
            err.close()
        self.pid = self.popen.pid
        self.started = time.monotonic()

    # -- output ---------------------------------------------------------
    def stderr(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stdout(self):
        try:
            with open(self.stdout_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_stdout(self, regex, timeout):
        r = re.compile(regex)

        def found():
            m = r.search(self.stdout())
            if m:
                return m
            self._check_alive("its output /%s/" % regex)
            return None
        return wait_until(found, timeout, "%s to print /%s/" %
                          (self.name, regex))

    def count_log(self, regex, text=None):
        return len(re.findall(regex, self.stderr() if text is None else text))

    def wait_log(self, regex, count=1, timeout=10.0, alive=True):
        """Waits until stderr holds count lines matching regex; returns
        the matches."""
        r = re.compile(regex)

        def found():
            m = r.findall(self.stderr())
            if len(m) >= count:
                return m
            if alive:
                self._check_alive("%d x /%s/" % (count, regex))
            return None
        return wait_until(found, timeout, "%d x /%s/ in %s's log" %
                          (count, regex, self.name))

    def _check_alive(self, what):
        if self.popen.poll() is not None:
            self.rc = self.popen.returncode
            raise TestFailure("%s exited (status %s) while waiting for %s" %
                              (self.name, self.rc, what))

    # -- lifetime -------------------------------------------------------
    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.popen.poll() is None:
            os.kill(self.pid, sig)

    def kill9(self):
        """SIGKILL on purpose: its exit status and leak report are moot."""
        self.expect_killed = True
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self.rc = self.popen.returncode

    def wait_exit(self, timeout):
        try:
            self.rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s (pid %d) did not exit within %.1f s" %
                              (self.name, self.pid, timeout))
        return self.rc

    def stop(self, timeout=None):
        """SIGTERM and wait; a daemon must exit with status 0."""
        timeout = timeout or scaled(15)
        self.signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        self.check_exit(rc)
        return rc

    def check_exit(self, rc):
        if self.vg_path and rc == 99:
            raise TestFailure("%s: valgrind reported errors or leaks "
                              "(exit 99)" % self.name)
        if rc != 0:
            raise TestFailure("%s exited with status %s" % (self.name, rc))

    def problems(self):
        """Sanitizer or valgrind findings in this process's output."""
        out = []
        text = self.stderr()
        for m in SANITIZER_MARKERS:
            if m in text:
                out.append("%s: sanitizer report on stderr (%r)" %
                           (self.name, m))
                break
        if self.vg_path and os.path.exists(self.vg_path):
            with open(self.vg_path, errors="replace") as f:
                vg = f.read()
            m = re.search(r"ERROR SUMMARY: (\d+) errors", vg)
            lost = re.findall(r"(definitely|indirectly) lost: ([\d,]+) bytes",
                              vg)
            print("  valgrind %s: %s%s" % (
                self.name, "%s errors" % m.group(1) if m else
                "no summary (killed)" if self.expect_killed else "no summary",
                "".join(", %s lost %s bytes" % x for x in lost)))
            if m and int(m.group(1)) != 0:
                out.append("%s: valgrind: %s errors" % (self.name,
                                                        m.group(1)))
            elif not m and not self.expect_killed and self.rc is not None:
                out.append("%s: valgrind wrote no ERROR SUMMARY" % self.name)
        return out


class Kas:
    def __init__(self, proc, agent_port, api_port, http_port=None,
                 http_scheme=None, ca_file=None):
        self.proc = proc
        self.agent_port = agent_port
        self.api_port = api_port
        self.agent_url = "tcp://127.0.0.1:%d" % agent_port
        self.api_url = "tcp://127.0.0.1:%d" % api_port
        # The HTTP gateway (--http-listen), when started with one:
        # http_url is the base URL ("https://127.0.0.1:PORT"), ca_file
        # the certificate a client must trust for https.
        self.http_port = http_port
        self.http_scheme = http_scheme
        self.ca_file = ca_file
        self.http_url = ("%s://127.0.0.1:%d" % (http_scheme, http_port)
                         if http_port else None)


class Env:
    """Per-test state. Use as a context manager; cleanup always runs."""

    def __init__(self, name, progs):
        self.name = name
        self.kasd_bin = progs["KASD"]
        self.agentd_bin = progs["AGENTD"]
        self.kasctl_bin = progs["KASCTL"]
        self.echo_bin = progs["ECHO_SERVER"]
        self.dir = tempfile.mkdtemp(prefix="kr-sys-%s-" % name)
        self.procs = []
        self.seq = 0
        self.secret_file = self.path("api.secret")
        with open(self.secret_file, "w") as f:
            f.write(base64.b64encode(os.urandom(32)).decode())

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, data):
        p = self.path(name)
        with open(p, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return p

    def spawn(self, base, argv, kind, valgrind=False, **kw):
        self.seq += 1
        p = Proc(self, "%02d-%s" % (self.seq, base), argv, kind,
                 valgrind=valgrind, **kw)
        self.procs.append(p)
        return p

    # -- fixtures -------------------------------------------------------
    def start_echo(self, sink=False):
        p = self.spawn("echo", [self.echo_bin] + (["--sink"] if sink else []),
                       "helper")
        m = p.wait_stdout(r"port (\d+)\n", scaled(10))
        return int(m.group(1))

    def hash_token(self, token):
        r = subprocess.run([self.kasctl_bin, "hash-token"],
                           input=token.encode(), capture_output=True,
                           timeout=scaled(10))
        check(r.returncode == 0, "kasctl hash-token failed: %r" % r.stderr)
        h = r.stdout.decode().strip()
        check(re.fullmatch(r"[0-9a-f]{64}", h), "bad hash %r" % h)
        return h

    def agent_credentials(self, token=None, agent_id=AGENT_ID):
        """Writes a token file for agentd and a kasd token table that
        maps it to agent_id. Returns (token, token_file, tokens_file)."""
        token = token or "agent-token-" + base64.b32encode(
            os.urandom(15)).decode().lower()
        tf = self.write("agent%d.token" % agent_id, token)
        table = self.write("tokens", "%d %s system-test-agent\n" %
                           (agent_id, self.hash_token(token)))
        return token, tf, table

    def start_kasd(self, tokens_file, agent_port=0, api_port=0,
                   route_timeout=None, keepalive=None, handshake_timeout=None,
                   drain_grace=None, extra=(), http=None, http_port=0,
                   user_tokens=None, http_request_timeout=None,
                   http_idle_timeout=None):
        """http: None (no gateway), "http" (or True) or "https" (with a
        certificate from make_cert, or the --tls-cert/--tls-key given in
        extra). The Kas returned then carries http_port and http_url."""
        if http is True:
            http = "http"
        check(http in (None, "http", "https"), "http=%r" % (http,))
        argv = [self.kasd_bin,
                "--agent-listen", "tcp://127.0.0.1:%d" % agent_port,
                "--api-listen", "tcp://127.0.0.1:%d" % api_port,
                "--agent-tokens", tokens_file,
                "--api-secret-file", self.secret_file]
        for opt, v in (("--route-timeout", route_timeout),
                       ("--keepalive", keepalive),
                       ("--handshake-timeout", handshake_timeout),
                       ("--drain-grace", drain_grace),
                       ("--user-tokens", user_tokens),
                       ("--http-request-timeout", http_request_timeout),
                       ("--http-idle-timeout", http_idle_timeout)):
            if v is not None:
                argv += [opt, str(v)]
        ca_file = None
        if http:
            argv += ["--http-listen", "%s://127.0.0.1:%d" % (http, http_port)]
            if http == "https":
                if "--tls-cert" in extra:
                    ca_file = list(extra)[list(extra).index("--tls-cert") + 1]
                else:
                    ca_file, key = self.make_cert("127.0.0.1")
                    argv += ["--tls-cert", ca_file, "--tls-key", key]
        argv += list(extra)
        p = self.spawn("kasd", argv, "daemon", valgrind=VALGRIND)
        # Extra fields may follow the ports on the ready line.
        m = p.wait_stdout(r"kasd ready agent_port=(\d+) api_port=(\d+)"
                          r"((?: \S+=\S*)*)\n", scaled(10))
        hp = re.search(r" http_port=(\d+)", m.group(3))
        if http:
            check(hp, "kasd started with --http-listen printed no "
                  "http_port= on its ready line: %r" % m.group(0))
        return Kas(p, int(m.group(1)), int(m.group(2)),
                   int(hp.group(1)) if hp else None, http, ca_file)

    def start_agentd(self, kas, token_file, services, connections=2,
                     keepalive=None, drain_grace=None, name="r1",
                     wait=True, extra=()):
        """services: {name: port or URL}: a port means
        tcp://127.0.0.1:PORT, a str is passed as given (http://...,
        https://...). With wait, returns once kasd has registered all
        connections of this agent."""
        url = kas.agent_url if isinstance(kas, Kas) else kas
        argv = [self.agentd_bin, "--kas", url, "--token-file", token_file,
                "--connections", str(connections), "--name", name]
        for svc, port in services.items():
            if isinstance(port, str):
                argv += ["--service", "%s=%s" % (svc, port)]
            else:
                argv += ["--service", "%s=tcp://127.0.0.1:%d" % (svc, port)]
        if keepalive is not None:
            argv += ["--keepalive", str(keepalive)]
        if drain_grace is not None:
            argv += ["--drain-grace", str(drain_grace)]
        argv += list(extra)
        before = (kas.proc.count_log(r"event=agent_connected .*replica=%s " %
                                     re.escape(name))
                  if isinstance(kas, Kas) else 0)
        p = self.spawn("agentd", argv, "daemon", valgrind=VALGRIND)
        if wait and isinstance(kas, Kas):
            self.wait_agent(kas, before + connections, name=name)
            p.wait_log(r"event=connected ", connections, scaled(10))
        return p

    def wait_agent(self, kas, count, name="r1", timeout=None):
        return kas.proc.wait_log(
            r"event=agent_connected kas=\S+ agent=%d replica=%s " %
            (AGENT_ID, re.escape(name)), count, timeout or scaled(10))

    def kasctl_argv(self, cmd, kas, agent=AGENT_ID, service="echo"):
        return [self.kasctl_bin, cmd, "--kas", kas.api_url, "--secret-file",
                self.secret_file, "--agent", str(agent), "--service", service]

    def pipe(self, kas, data, agent=AGENT_ID, service="echo", timeout=None):
        """Runs kasctl pipe to completion. Returns (rc, stdout bytes,
        stderr text, seconds)."""
        p = self.spawn("kasctl-pipe", self.kasctl_argv("pipe", kas, agent,
                                                       service), "client",
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        t0 = time.monotonic()
        try:
            out, _ = p.popen.communicate(data, timeout=timeout or scaled(30))
        except subprocess.TimeoutExpired:
            raise TestFailure("kasctl pipe (agent %s, service %s) still "
                              "running after %.1f s" %
                              (agent, service, timeout or scaled(30)))
        p.rc = p.popen.returncode
        return p.rc, out, p.stderr(), time.monotonic() - t0

    def open_pipe(self, kas, agent=AGENT_ID, service="echo"):
        """A running kasctl pipe with stdin/stdout as pipes."""
        return self.spawn("kasctl-pipe", self.kasctl_argv("pipe", kas, agent,
                                                          service), "client",
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def start_forward(self, kas, agent=AGENT_ID, service="echo"):
        """kasctl forward on a free loopback port; returns (proc, port)
        once it accepts connections."""
        for attempt in range(5):
            # The port is picked here and handed over; another process can
            # take it in between, so a failed bind is retried.
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s.close()
            argv = [self.kasctl_bin, "forward", "tcp://127.0.0.1:%d" % port,
                    "--kas", kas.api_url, "--secret-file", self.secret_file,
                    "--agent", str(agent), "--service", service]
            p = self.spawn("kasctl-forward", argv, "client")
            try:
                p.wait_log(r"event=forwarding ", 1, scaled(10))
                return p, port
            except TestFailure:
                if p.alive() or "cannot listen" not in p.stderr():
                    raise
        raise TestFailure("kasctl forward could not find a free port")

    # -- HTTP gateway fixtures -----------------------------------------
    def make_cert(self, cn, sans=None):
        """A self-signed ECDSA P-256 certificate (CA:TRUE, so it is its own
        trust anchor) and key made with the openssl program; returns
        (cert_path, key_path). sans: subjectAltName entries, by default
        IP:127.0.0.1 and DNS:localhost (Go clients such as kubectl check
        only the SAN, never the CN)."""
        require_program("openssl", "to make test certificates")
        self.seq += 1
        cert = self.path("%02d-%s.crt" % (self.seq, cn))
        key = self.path("%02d-%s.key" % (self.seq, cn))
        san = ",".join(sans or ["IP:127.0.0.1", "DNS:localhost"])
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=" + cn,
             "-addext", "subjectAltName=" + san, "-days", "1",
             "-keyout", key, "-out", cert], capture_output=True,
            timeout=scaled(20))
        check(r.returncode == 0, "openssl req failed: %s" %
              r.stderr.decode(errors="replace")[-500:])
        return cert, key

    def secret(self):
        """The API secret's bytes as kasd and kasctl read them."""
        with open(self.secret_file, "rb") as f:
            return f.read().rstrip(b"\r\n")

    def token(self, agents=(), k8s_agent=None, user=None, groups=(),
              ttl=None, subject=None):
        """An API JWT minted by `kasctl token` from the API secret:
        agents -> the "agents" claim (one --agent each), k8s_agent ->
        "agent_id", user -> "user", groups -> "groups"."""
        argv = [self.kasctl_bin, "token", "--secret-file", self.secret_file]
        for a in agents:
            argv += ["--agent", str(a)]
        for opt, v in (("--k8s-agent", k8s_agent), ("--user", user),
                       ("--ttl", ttl), ("--subject", subject)):
            if v is not None:
                argv += [opt, str(v)]
        for g in groups:
            argv += ["--group", g]
        r = subprocess.run(argv, capture_output=True, timeout=scaled(10))
        check(r.returncode == 0, "%s failed (exit %d): %s" % (
            " ".join(argv[:2] + argv[4:]), r.returncode,
            r.stderr.decode(errors="replace").strip()))
        tok = r.stdout.decode().strip()
        check(re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
                           tok), "kasctl token printed no JWT")
        return tok

    def start_http_upstream(self):
        """tests/system/http_upstream.py as a helper process; returns
        (proc, port)."""
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "http_upstream.py")
        p = self.spawn("http-upstream", [sys.executable, script], "helper")
        m = p.wait_stdout(r"port (\d+)\n", scaled(10))
        return p, int(m.group(1))

    # -- cleanup --------------------------------------------------------
    def shutdown(self):
        """Stops whatever still runs: clients, then agents, then kas, then
        helpers; each by SIGTERM and its pid. Returns the problems found
        (non-zero exits, sanitizer and valgrind reports)."""
        problems = []
        order = {"client": 0, "daemon": 1, "helper": 3}

        def rank(p):
            r = order[p.kind]
            if p.kind == "daemon" and "kasd" in p.name:
                r = 2
            return r
        for p in sorted(self.procs, key=rank):
            if p.alive():
                p.signal(signal.SIGTERM)
                try:
                    p.rc = p.popen.wait(timeout=scaled(15))
                except subprocess.TimeoutExpired:
                    problems.append("%s (pid %d) ignored SIGTERM for %.0f s;"
                                    " killed" % (p.name, p.pid, scaled(15)))
                    p.expect_killed = True
                    p.signal(signal.SIGKILL)
                    p.popen.wait()
                    p.rc = p.popen.returncode
                    continue
                if p.kind == "daemon" and p.rc != 0:
                    problems.append("%s exited with status %s on SIGTERM%s" %
                                    (p.name, p.rc, " (valgrind errors)"
                                     if p.vg_path and p.rc == 99 else ""))
            else:
                p.rc = p.popen.returncode
                if (p.vg_path and p.rc == 99 and not p.expect_killed):
                    problems.append("%s: valgrind exit status 99" % p.name)
            for f in (p.popen.stdin, p.popen.stdout):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass
        for p in self.procs:
            problems += p.problems()
        return problems

    def dump_logs(self, lines=120):
        for p in self.procs:
            print("----- %s (pid %d, status %s): %s" %
                  (p.name, p.pid, p.rc, " ".join(p.argv)))
            text = p.stderr().splitlines()
            if len(text) > lines:
                print("  [... %d earlier lines]" % (len(text) - lines))
            for ln in text[-lines:]:
                print("  " + ln)
            if p.vg_path and os.path.exists(p.vg_path):
                print("----- valgrind log of %s" % p.name)
                with open(p.vg_path, errors="replace") as f:
                    for ln in f.read().splitlines()[-lines:]:
                        print("  " + ln)


def _alarm(signum, frame):
    raise TestTimeout("test exceeded its time bound")


def run(tests, bound=60):
    """Runs test functions (each takes an Env). Command-line arguments
    select tests by name (without the test_ prefix). Each test gets a hard
    time bound (scaled for valgrind/ASan); logs are printed on failure.
    Exits 0 if all passed, 1 otherwise."""
    sel = sys.argv[1:]
    chosen = [t for t in tests
              if not sel or t.__name__.replace("test_", "", 1) in sel]
    if sel and len(chosen) != len(sel):
        print("unknown test name in %r" % sel)
        sys.exit(2)
    progs = programs()
    signal.signal(signal.SIGALRM, _alarm)
    failed = []
    t_all = time.monotonic()
    for t in chosen:
        name = t.__name__.replace("test_", "", 1)
        print("=== %s%s" % (name, " (valgrind)" if VALGRIND else ""))
        sys.stdout.flush()
        t0 = time.monotonic()
        err = None
        env = None
        signal.alarm(int(scaled(bound)))
        try:
            env = Env(name, progs)
            t(env)
        except (TestFailure, TestTimeout) as e:
            err = "%s: %s" % (type(e).__name__, e)
        except Exception:
            err = traceback.format_exc()
        finally:
            signal.alarm(0)
            try:
                signal.alarm(int(scaled(60)))
                problems = env.shutdown() if env else []
            except TestTimeout:
                problems = ["cleanup exceeded its time bound"]
                for p in env.procs if env else []:
                    if p.alive():
                        p.signal(signal.SIGKILL)
            finally:
                signal.alarm(0)
        if problems:
            err = (err + "\n" if err else "") + "\n".join(problems)
        dt = time.monotonic() - t0
        if err:
            failed.append(name)
            print("FAIL %s (%.1f s)\n%s" % (name, dt, err))
            if env:
                env.dump_logs()
                print("temporary directory: %s%s" % (
                    env.dir, "" if os.environ.get("KEEP_TMP") == "1"
                    else " (removed; KEEP_TMP=1 keeps it)"))
        else:
            print("PASS %s (%.1f s)" % (name, dt))
        if env and (not err or os.environ.get("KEEP_TMP") != "1"):
            shutil.rmtree(env.dir, ignore_errors=True)
        sys.stdout.flush()
    print("%d/%d passed in %.1f s" % (len(chosen) - len(failed), len(chosen),
                                      time.monotonic() - t_all))
    sys.exit(1 if failed else 0)


def log(msg, *args):
    print("  " + (msg % args if args else msg))
    sys.stdout.flush()


def connect(port, timeout=None):
    s = socket.create_connection(("127.0.0.1", port),
                                 timeout=timeout or scaled(10))
    return s


class StreamCheck:
    """Sends n bytes of a Pattern over a connected socket from start and
    reads the echo back, in two threads; records counts and CRC-32s of
    both directions and the first error."""

    CHUNK = 256 * 1024

    def __init__(self, sock, pattern, start, n, timeout):
        self.sock = sock
        self.pat = pattern
        self.start = start
        self.n = n
        self.sent = 0
        self.recv = 0
        self.crc_sent = 0
        self.crc_recv = 0
        self.error = None
        self.done = threading.Event()
        self.deadline = time.monotonic() + timeout
        sock.settimeout(timeout)
        self.tx = threading.Thread(target=self._send, daemon=True)
        self.rx = threading.Thread(target=self._recv, daemon=True)

    def begin(self):
        self.t0 = time.monotonic()
        self.tx.start()
        self.rx.start()
        return self

    def _send(self):
        try:
            pos = self.start
            while self.sent < self.n:
                k = min(self.CHUNK, self.n - self.sent)
                c = self.pat.chunk(pos, k)
                self.sock.sendall(c)
                self.crc_sent = zlib.crc32(c, self.crc_sent)
                self.sent += k
                pos += k
            self.sock.shutdown(socket.SHUT_WR)
        except Exception as e:
            self.error = self.error or "send after %d bytes: %r" % (
                self.sent, e)

    def _recv(self):
        try:
            buf = bytearray(self.CHUNK)
            mv = memoryview(buf)
            while True:
                k = self.sock.recv_into(buf)
                if k == 0:
                    break
                self.crc_recv = zlib.crc32(mv[:k], self.crc_recv)
                self.recv += k
            self.t1 = time.monotonic()
        except Exception as e:
            self.error = self.error or "recv after %d bytes: %r" % (
                self.recv, e)
        finally:
            self.done.set()

    def join(self):
        self.tx.join(max(0.0, self.deadline - time.monotonic()))
        self.rx.join(max(0.0, self.deadline - time.monotonic()))
        if self.rx.is_alive():
            self.error = self.error or "no end of stream in time (sent %d, " \
                "received %d of %d)" % (self.sent, self.recv, self.n)
        try:
            self.sock.close()
        except OSError:
            pass

    def verdict(self):
        """None when the echo was complete and byte-exact, else why not."""
        if self.error:
            return self.error
        if self.recv != self.n:
            return "received %d bytes, expected %d" % (self.recv, self.n)
        if self.crc_recv != self.crc_sent:
            return "echo differs from what was sent (crc %08x != %08x)" % (
                self.crc_recv, self.crc_sent)
        return None


def vmrss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise TestFailure("no VmRSS for pid %d" % pid)


def read_exact(f, n, timeout):
    """Reads n bytes from a pipe (file object) within timeout; fewer on
    EOF. Uses the raw descriptor with select, so it never blocks past the
    deadline."""
    fd = f.fileno()
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TestFailure("read %d of %d bytes within %.1f s" %
                              (len(out), n, timeout))
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        b = os.read(fd, n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


# ---------------------------------------------------------------------------
# HTTP gateway helpers


def require_program(name, why):
    """Exits SKIP, loudly, when the program is not installed. Call before
    run() (or from a test: cleanup still runs)."""
    path = shutil.which(name)
    if not path:
        print("SKIP: %s is not on PATH; this test needs it %s" % (name, why))
        print("SKIP: " + "*" * 60)
        sys.stdout.flush()
        sys.exit(SKIP)
    return path


def free_port():
    """A loopback port that was free a moment ago. Another process can
    take it before it is used: prefer port 0 where the program reports
    what it bound."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(secret, claims, header=None, signature=None):
    """A compact JWT built here, independently of the library: header
    (default {"alg":"HS256","typ":"JWT"}) and claims as given, signed with
    HMAC-SHA256 over secret unless signature (str) is given ("" for an
    unsigned token)."""
    import hashlib
    import hmac
    import json
    h = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"},
                          separators=(",", ":")).encode())
    p = b64url(json.dumps(claims, separators=(",", ":")).encode())
    if signature is None:
        signature = b64url(hmac.new(secret, ("%s.%s" % (h, p)).encode(),
                                    hashlib.sha256).digest())
    return "%s.%s.%s" % (h, p, signature)


def jwt_claims(ttl=300, now=None, **extra):
    """The registered claims kas checks (aud gitlab-kas, exp) plus extra."""
    now = int(time.time() if now is None else now)
    c = {"iss": "system-test", "aud": "gitlab-kas", "sub": "tester",
         "iat": now, "nbf": now, "exp": now + ttl}
    c.update(extra)
    return c


class HttpResult:
    def __init__(self, status, reason, headers, body, seconds):
        self.status = status
        self.reason = reason
        self.headers = headers  # http.client.HTTPMessage (multi-valued)
        self.body = body
        self.seconds = seconds

    def json(self):
        import json
        try:
            return json.loads(self.body)
        except ValueError:
            raise TestFailure("HTTP %d: body is not JSON: %r" %
                              (self.status, self.body[:300]))

    def __repr__(self):
        return "HTTP %d %s (%d body bytes: %r)" % (
            self.status, self.reason, len(self.body), self.body[:200])


def http_connection(kas_or_port, timeout=None):
    """An http.client connection to the kas gateway (http or https, the
    CA from the Kas), or to a plain port."""
    import http.client
    import ssl
    timeout = timeout or scaled(30)
    if isinstance(kas_or_port, int):
        return http.client.HTTPConnection("127.0.0.1", kas_or_port,
                                          timeout=timeout)
    if kas_or_port.http_scheme == "https":
        ctx = ssl.create_default_context(cafile=kas_or_port.ca_file)
        return http.client.HTTPSConnection("127.0.0.1", kas_or_port.http_port,
                                           timeout=timeout, context=ctx)
    return http.client.HTTPConnection("127.0.0.1", kas_or_port.http_port,
                                      timeout=timeout)


def http_do(conn, method, path, headers=None, body=None):
    """One request on an open http.client connection; the whole body is
    read. Headers may be a dict or a list of pairs (repeats allowed)."""
    t0 = time.monotonic()
    conn.putrequest(method, path, skip_accept_encoding=True)
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    for k, v in items:
        conn.putheader(k, v)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    data = r.read()
    return HttpResult(r.status, r.reason, r.headers, data,
                      time.monotonic() - t0)


def http_request(kas_or_port, method, path, headers=None, body=None,
                 token=None, timeout=None):
    """One request on a fresh connection. token adds "Authorization:
    Bearer <token>"."""
    hdrs = list(headers.items() if isinstance(headers, dict)
                else (headers or []))
    if token is not None:
        hdrs.append(("Authorization", "Bearer " + token))
    conn = http_connection(kas_or_port, timeout)
    try:
        return http_do(conn, method, path, hdrs, body)
    finally:
        conn.close()


def check_http_error(res, status, code, what):
    """res is an error answer of the gateway: that status and a JSON body
    {"error": "<message>", "code": code}."""
    check(res.status == status, "%s: HTTP %d, want %d: %r" %
          (what, res.status, status, res))
    ctype = res.headers.get("Content-Type", "")
    check(ctype.split(";")[0].strip() == "application/json",
          "%s: error body Content-Type %r, want application/json" %
          (what, ctype))
    j = res.json()
    check(isinstance(j, dict) and j.get("code") == code and
          isinstance(j.get("error"), str) and j["error"],
          "%s: error body %r, want {\"error\": ..., \"code\": %r}" %
          (what, j, code))
    return j


class _NoCloseFile:
    """A buffered reader shared by several http.client.HTTPResponse
    objects reading consecutive responses from one socket (they close
    their file when done; this one survives that)."""

    def __init__(self, f):
        self.f = f

    def __getattr__(self, name):
        return getattr(self.f, name)

    def close(self):
        pass


class _FakeSock:
    def __init__(self, f):
        self.f = f

    def makefile(self, *a, **kw):
        return self.f


def read_responses(sock, count, method="GET"):
    """Reads count consecutive HTTP/1.1 responses from a socket (e.g.
    answers to pipelined requests); returns HttpResults in order."""
    import http.client
    f = _NoCloseFile(sock.makefile("rb"))
    out = []
    for _ in range(count):
        t0 = time.monotonic()
        r = http.client.HTTPResponse(_FakeSock(f), method=method)
        r.begin()
        out.append(HttpResult(r.status, r.reason, r.headers, r.read(),
                              time.monotonic() - t0))
    return out
