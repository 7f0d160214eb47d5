"""The embedding examples (examples/embed_client.c, examples/embed_kas.c)
run against the real daemons, so they never rot.

- embed_client: kasd + agentd with an echo service and an http service
  (http_upstream.py); the example echoes a message, makes an HTTP request
  whose status and body it prints, and lists the agents; exit 0.
- embed_kas: started with --seconds; an agentd connects to it; its stats
  lines report the agent; it drains, frees everything and exits 0 by
  itself (the agent sees the GOAWAY).

EMBED_KAS and EMBED_CLIENT name the built examples (set by meson).
"""

import json
import os
import re
import sys

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


if __name__ == "__main__":
    for var in ("EMBED_KAS", "EMBED_CLIENT"):
        p = os.environ.get(var)
        if not p or not os.access(p, os.X_OK):
            print("SKIP: %s is not set to an executable (got %r)" % (var, p))
            sys.exit(SKIP)
        EXAMPLES[var] = os.path.abspath(p)
    harness.run([test_embed_client, test_embed_kas], bound=90)
