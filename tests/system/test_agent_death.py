"""An agent that dies or freezes: kas drops its tunnels in time, open
streams end with an error (no hang), new streams get NOTCONN.

kasd and agentd run with --keepalive 1: a PING after 1 s idle, a peer
silent for 3 s is dropped.

kill9:    agentd is killed with SIGKILL (its sockets close at once).
sigstop:  agentd is frozen with SIGSTOP (its sockets stay open and silent),
          so only kas's keepalive can notice; afterwards SIGCONT, and the
          agent must come back by itself and serve again.
"""

import signal
import time

import harness
from harness import AGENT_ID, check, log, read_exact, scaled

KEEPALIVE = 1
KEEPALIVE_TIMEOUT = 3 * KEEPALIVE


def setup(env):
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas = env.start_kasd(tokens, route_timeout=1, keepalive=KEEPALIVE)
    agent = env.start_agentd(kas, token_file, {"echo": echo}, connections=2,
                             keepalive=KEEPALIVE)
    # A stream that is open and known to work when the agent goes away.
    p = env.open_pipe(kas)
    p.popen.stdin.write(b"ping\n")
    p.popen.stdin.flush()
    got = read_exact(p.popen.stdout, 5, scaled(10))
    check(got == b"ping\n", "open stream: echo %r" % got)
    return echo, kas, agent, p


def check_aftermath(env, kas, p, t0, lo, hi):
    """Both tunnels dropped within [lo, hi] s of t0, the open stream ended
    with an error, and a new stream gets NOTCONN."""
    kas.proc.wait_log(r"event=agent_disconnected [^\n]*agent=%d " % AGENT_ID,
                      2, hi + scaled(2))
    dt = time.monotonic() - t0
    log("kas dropped both tunnels %.2f s after the agent went away "
        "(keepalive timeout %d s)", dt, KEEPALIVE_TIMEOUT)
    for ln in kas.proc.stderr().splitlines():
        if "event=agent_disconnected" in ln:
            log("  %s", ln.split("event=", 1)[1])
    check(lo <= dt <= hi, "tunnels dropped after %.2f s, expected within "
          "[%.1f, %.1f] s" % (dt, lo, hi))
    rc = p.wait_exit(scaled(5))
    err = p.stderr().strip()
    log("the open stream's kasctl exited %d: %s", rc, err)
    check(rc == 1, "open stream: kasctl exit %d (want 1): %s" % (rc, err))
    check(err.startswith("kasctl:"), "open stream: no error message")
    rc, out, err, dt2 = env.pipe(kas, b"x\n")
    log("new stream -> exit %d after %.2f s: %s", rc, dt2, err.strip())
    check(rc == 1 and "NOTCONN" in err,
          "new stream after the agent died: exit %d: %r" % (rc, err))


def test_kill9(env):
    echo, kas, agent, p = setup(env)
    t0 = time.monotonic()
    agent.kill9()
    check_aftermath(env, kas, p, t0, 0.0, KEEPALIVE_TIMEOUT + scaled(1))


def test_sigstop(env):
    echo, kas, agent, p = setup(env)
    agent.signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        # The last frame from the agent arrived at most one keepalive
        # interval before the stop; kas gives up 3 s after that frame.
        check_aftermath(env, kas, p, t0,
                        KEEPALIVE_TIMEOUT - KEEPALIVE - 0.5,
                        KEEPALIVE_TIMEOUT + scaled(1.5))
    finally:
        agent.signal(signal.SIGCONT)
    # Thawed, the agent finds its tunnels gone and reconnects by itself.
    env.wait_agent(kas, 4, timeout=scaled(40))
    rc, out, err, _ = env.pipe(kas, b"back\n")
    check(rc == 0 and out == b"back\n",
          "echo after the agent came back: exit %d: %s" % (rc, err))
    agent.stop()
    kas.proc.stop()


if __name__ == "__main__":
    harness.run([test_kill9, test_sigstop], bound=90)
