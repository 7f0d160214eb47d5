"""kubectl through the kas Kubernetes proxy: kubectl 1.32 -> kasd
--http-listen https://127.0.0.1:0 (test certificate) /k8s-proxy -> agentd
--kubernetes-url http://127.0.0.1:S --kubernetes-token-file F -> the API
stand-in (k8s_standin.py), which checks that every request carries the
agent's service-account token and the caller's identity as
Impersonate-User / Impersonate-Group.

kubectl:  a kubeconfig from `kasctl kubeconfig` (JWT: user alice, groups
          dev, ops): `kubectl get pods` lists pod-a and pod-b;
          `kubectl get pods --watch` prints streamed events up to the
          MODIFIED one, and when kubectl is stopped the stand-in sees its
          watch end; `kubectl exec -i pod-a -- cat` round-trips "hello\\n"
          and 1 MiB over the WebSocket exec protocol (v5.channel.k8s.io).
          A second kubeconfig with a pat: token from --user-tokens (user
          bob, groups qa, viewers) lists the pods as bob.
refusals: a caller-supplied Impersonate-User (curl, and kubectl --as)
          -> 403 forbidden; a pat: token for another agent -> 403; a JWT
          without a user, no credentials -> 401; none of them reaches the
          API server. Neither the service-account token nor the pat: token
          appears in a daemon's log.
Exits 77 (skip) when kubectl or curl is missing.
"""

import base64
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import time

import harness
from harness import AGENT_ID, MiB, check, log, scaled, Pattern

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import k8s_standin  # noqa: E402


def rand_token(prefix):
    return prefix + base64.b32encode(os.urandom(15)).decode().lower()


class Setup:
    def __init__(self, env, standin):
        self.env = env
        self.sa_token = standin.token
        self.sa_file = env.write("sa.token", self.sa_token + "\n")
        self.standin = standin
        self.s_port = standin.start()
        _, token_file, tokens = env.agent_credentials()
        # pat: tokens: bob may reach agent 7, carol only agent 8.
        self.bob = rand_token("pat-bob-")
        self.carol = rand_token("pat-carol-")
        self.ut_file = env.write("user-tokens", (
            "# SHA256_HEX AGENTS USER [GROUPS]\n"
            "%s %d bob qa,viewers\n"
            "%s %d carol\n") % (
                hashlib.sha256(self.bob.encode()).hexdigest(), AGENT_ID,
                hashlib.sha256(self.carol.encode()).hexdigest(),
                AGENT_ID + 1))
        self.kas = env.start_kasd(tokens, route_timeout=5, http="https",
                                  user_tokens=self.ut_file)
        self.agent = env.start_agentd(
            self.kas, token_file, {}, connections=2, extra=[
                "--kubernetes-url", "http://127.0.0.1:%d" % self.s_port,
                "--kubernetes-token-file", self.sa_file])
        self.cache = env.path("kube-cache")
        server = self.kas.http_url
        log("kasd gateway %s, API stand-in on port %d", server, self.s_port)
        self.kc_alice = self.kubeconfig("alice", [
            "--secret-file", env.secret_file, "--user", "alice",
            "--group", "dev", "--group", "ops"])
        bob_file = env.write("bob.pat", self.bob + "\n")
        self.kc_bob = self.kubeconfig("bob", ["--pat-file", bob_file])

    def kubeconfig(self, name, args):
        argv = [self.env.kasctl_bin, "kubeconfig", "--server",
                self.kas.http_url, "--agent", str(AGENT_ID), "--ca-file",
                self.kas.ca_file] + args
        r = subprocess.run(argv, capture_output=True, timeout=scaled(10))
        check(r.returncode == 0, "kasctl kubeconfig (%s) failed: %s" %
              (name, r.stderr.decode(errors="replace").strip()))
        return self.env.write("kubeconfig-%s.yaml" % name, r.stdout)

    def kubectl_argv(self, kc, args):
        return ["kubectl", "--kubeconfig", kc, "--cache-dir", self.cache,
                "--request-timeout", "%ds" % int(scaled(20))] + list(args)

    def kubectl(self, kc, args, stdin=b"", timeout=None):
        """Runs kubectl to completion; (rc, stdout bytes, stderr text)."""
        p = self.env.spawn("kubectl", self.kubectl_argv(kc, args), "client",
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            out, _ = p.popen.communicate(stdin, timeout=timeout or
                                         scaled(40))
        except subprocess.TimeoutExpired:
            raise harness.TestFailure("kubectl %s still running after "
                                      "%.0f s" % (" ".join(args), timeout or
                                                  scaled(40)))
        p.rc = p.popen.returncode
        return p.rc, out, p.stderr()

    def curl(self, path, headers):
        """GET through the gateway with curl; returns (status, body)."""
        argv = ["curl", "-sS", "--cacert", self.kas.ca_file, "-o", "-",
                "-w", "\n%{http_code}"]
        for h in headers:
            argv += ["-H", h]
        r = subprocess.run(argv + [self.kas.http_url + path],
                           capture_output=True, timeout=scaled(20))
        check(r.returncode == 0, "curl %s: %s" % (path, r.stderr))
        body, code = r.stdout.rsplit(b"\n", 1)
        return int(code), body

    def violations(self):
        check(not self.standin.violations, "the API stand-in saw bad "
              "requests:\n  " + "\n  ".join(self.standin.violations))


def pod_names(out):
    return sorted(ln.split()[0] for ln in out.decode().splitlines()[1:]
                  if ln.strip())


def watch_until_modified(s):
    """kubectl get pods --watch: reads its stdout until the MODIFIED event
    is printed, then stops kubectl. Returns the lines read."""
    argv = s.kubectl_argv(s.kc_alice, ["get", "pods", "--watch",
                                       "--output-watch-events"])
    p = s.env.spawn("kubectl-watch", argv, "client",
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    fd = p.popen.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + scaled(30)
    try:
        while not re.search(rb"(?m)^MODIFIED\s+pod-a\b", buf):
            left = deadline - time.monotonic()
            check(left > 0, "kubectl --watch printed no MODIFIED event in "
                  "%.0f s; got %r; stderr %s" % (scaled(30), buf,
                                                 p.stderr()))
            r, _, _ = select.select([fd], [], [], left)
            if r:
                b = os.read(fd, 65536)
                check(b, "kubectl --watch ended early (status %s): %r %s" %
                      (p.popen.poll(), buf, p.stderr()))
                buf += b
    finally:
        p.signal(15)  # kubectl was started here; stop it by its pid
        p.popen.wait(timeout=scaled(10))
    return buf.decode().splitlines()


def test_kubectl(env):
    standin = k8s_standin.Standin(rand_token("sa-token-"), "alice",
                                  ["dev", "ops"], hold=60)
    try:
        run_kubectl(env, Setup(env, standin))
    finally:
        standin.stop()


def run_kubectl(env, s):
    st = s.standin

    # kubectl get pods (JWT identity alice / dev, ops).
    rc, out, err = s.kubectl(s.kc_alice, ["get", "pods"])
    check(rc == 0, "kubectl get pods: exit %d: %s" % (rc, err))
    check(pod_names(out) == ["pod-a", "pod-b"], "kubectl get pods printed "
          "%r" % out)
    s.violations()
    n = len(st.seen())
    check(n >= 2, "the stand-in saw %d requests" % n)
    log("kubectl get pods (alice): %s; stand-in saw %d requests as alice "
        "[dev, ops]", pod_names(out), n)

    # kubectl get pods --watch: streamed events; stopping kubectl ends
    # the upstream watch.
    t0 = time.monotonic()
    lines = watch_until_modified(s)
    log("kubectl --watch: %d lines up to MODIFIED in %.2f s: %s", len(lines),
        time.monotonic() - t0, [ln.split()[:2] for ln in lines[1:]])
    harness.wait_until(lambda: "client" in st.watches_ended, scaled(10),
                       "the stand-in to see the watch end after kubectl "
                       "stopped")
    log("the stand-in saw the watch's client leave")
    s.violations()

    # kubectl exec: stdin echoed back over the WebSocket exec protocol.
    rc, out, err = s.kubectl(s.kc_alice, ["exec", "-i", "pod-a", "--",
                                          "cat"], stdin=b"hello\n")
    check(rc == 0, "kubectl exec: exit %d: %s" % (rc, err))
    check(out == b"hello\n", "kubectl exec cat printed %r" % out)
    ex = st.execs[-1]
    check(ex["stdin"] == b"hello\n" and ex["status_sent"],
          "the stand-in's exec saw %r" % ex)
    up = [r for r in st.seen() if r["upgrade"] == "websocket"]
    check(up, "exec did not arrive as a WebSocket upgrade")
    log("kubectl exec -i pod-a -- cat: %r round-trips (%s)", out,
        up[-1]["path"].split("?")[0])
    data = Pattern(0x6B756265).make(0, MiB)
    t0 = time.monotonic()
    rc, out, err = s.kubectl(s.kc_alice, ["exec", "-i", "pod-a", "--",
                                          "cat"], stdin=data)
    check(rc == 0, "kubectl exec (1 MiB): exit %d: %s" % (rc, err))
    check(out == data, "kubectl exec cat of 1 MiB: got %d bytes, %s" %
          (len(out), "equal prefix" if data.startswith(out) else
           "different bytes"))
    log("kubectl exec: 1 MiB round-trips in %.2f s", time.monotonic() - t0)
    s.violations()

    # A pat: token from the user-token file (bob / qa, viewers).
    st.expect("bob", ["qa", "viewers"])
    before = len(st.seen())
    rc, out, err = s.kubectl(s.kc_bob, ["get", "pods"])
    check(rc == 0, "kubectl get pods (pat:): exit %d: %s" % (rc, err))
    check(pod_names(out) == ["pod-a", "pod-b"], "kubectl get pods (pat:) "
          "printed %r" % out)
    check(len(st.seen()) > before, "the pat: requests never arrived")
    s.violations()
    log("kubectl get pods with a pat: token: the stand-in saw bob [qa, "
        "viewers]")

    # Refusals: none reaches the API server.
    st.expect("nobody-should-arrive", [])
    before = len(st.seen())
    jwt = env.token(k8s_agent=AGENT_ID, user="alice", groups=["dev", "ops"])
    pods = "/k8s-proxy/api/v1/namespaces/default/pods"
    code, body = s.curl(pods, ["Authorization: Bearer " + jwt,
                               "Impersonate-User: root"])
    check(code == 403, "caller-supplied Impersonate-User: HTTP %d %r" %
          (code, body[:200]))
    j = json.loads(body)
    check(j.get("code") == "forbidden", "Impersonate-User: body %r" % j)
    log("curl with Impersonate-User: root -> 403 %s", json.dumps(j))
    code, body = s.curl(pods, ["Authorization: Bearer " + jwt,
                               "Impersonate-Group: system:masters"])
    check(code == 403, "caller-supplied Impersonate-Group: HTTP %d" % code)
    rc, out, err = s.kubectl(s.kc_alice, ["--as", "root", "get", "pods"])
    check(rc != 0, "kubectl --as root succeeded: %r" % out)
    log("kubectl --as root -> exit %d: %s", rc, err.strip()[:160])
    code, body = s.curl(pods, ["Authorization: Bearer pat:%d:%s" %
                               (AGENT_ID, s.carol)])
    check(code == 403 and json.loads(body).get("code") == "forbidden",
          "pat: token for another agent: HTTP %d %r" % (code, body[:200]))
    log("pat: token of another agent -> 403")
    code, body = s.curl(pods, ["Authorization: Bearer pat:%d:%s" %
                               (AGENT_ID, s.bob + "x")])
    check(code == 401 and json.loads(body).get("code") == "unauthorized",
          "unknown pat: token: HTTP %d %r" % (code, body[:200]))
    nouser = env.token(k8s_agent=AGENT_ID)
    code, body = s.curl(pods, ["Authorization: Bearer " + nouser])
    check(code == 401, "JWT without user: HTTP %d %r" % (code, body[:200]))
    code, body = s.curl(pods, [])
    check(code == 401 and json.loads(body).get("code") == "unauthorized",
          "no credentials: HTTP %d %r" % (code, body[:200]))
    log("unknown pat:, JWT without user, no credentials -> 401")
    check(len(st.seen()) == before, "%d refused requests reached the API "
          "server" % (len(st.seen()) - before))
    s.violations()

    # No secret in the daemons' logs.
    for p in (s.kas.proc, s.agent):
        text = p.stderr()
        for what, t in (("service-account token", s.sa_token),
                        ("pat: token", s.bob), ("pat: token", s.carol),
                        ("JWT", jwt)):
            check(t not in text, "%s's log contains the %s" % (p.name, what))
    s.agent.stop()
    s.kas.proc.stop()


if __name__ == "__main__":
    harness.require_program("kubectl", "(kubectl 1.32 is not a Debian "
                            "package; install it to run this test)")
    harness.require_program("openssl", "to make test certificates "
                            "(apt-get install openssl)")
    harness.require_program("curl", "(apt-get install curl)")
    harness.run([test_kubectl], bound=90)
