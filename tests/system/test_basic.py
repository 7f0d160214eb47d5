"""Basic tunnel: kasd + agentd (2 connections) + an echo upstream.

- kasctl pipe echoes a few KB byte-exact through kas and the agent;
- an unknown service fails with NOSERVICE;
- an agent that is not connected fails with NOTCONN once the route
  timeout (1 s) has passed, not before and not much later.
"""

import harness
from harness import check, log, scaled, Pattern

SEED = 0x6B61735F


def test_basic(env):
    log("seed %#x", SEED)
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas = env.start_kasd(tokens, route_timeout=1)
    agent = env.start_agentd(kas, token_file, {"echo": echo}, connections=2)

    for size in (1, 5000, 64 * 1024 + 3):
        data = Pattern(SEED).make(size * 13, size)
        rc, out, err, dt = env.pipe(kas, data)
        check(rc == 0, "pipe of %d bytes: exit %d: %s" % (size, rc, err))
        check(out == data, "pipe of %d bytes: echo differs (got %d bytes)" %
              (size, len(out)))
        log("echoed %d bytes byte-exact in %.2f s", size, dt)

    rc, out, err, dt = env.pipe(kas, b"x\n", service="nope")
    check(rc == 1, "unknown service: exit %d (want 1): %s" % (rc, err))
    check("NOSERVICE" in err, "unknown service: no NOSERVICE in %r" % err)
    check(out == b"", "unknown service: unexpected output %r" % out)
    log("unknown service -> exit 1, %s", err.strip())

    rc, out, err, dt = env.pipe(kas, b"x\n", agent=harness.AGENT_ID + 1)
    check(rc == 1, "wrong agent: exit %d (want 1): %s" % (rc, err))
    check("NOTCONN" in err, "wrong agent: no NOTCONN in %r" % err)
    # The stream waits for the agent until the route timeout (1 s).
    check(dt >= 0.9, "wrong agent failed after %.2f s, before the 1 s "
          "route timeout" % dt)
    check(dt < scaled(5), "wrong agent failed only after %.2f s" % dt)
    log("wrong agent -> exit 1 after %.2f s, %s", dt, err.strip())
    kas.proc.wait_log(r"event=route_timeout .*agent=%d" %
                      (harness.AGENT_ID + 1), 1, scaled(5))

    # The tunnel still works after the failures.
    data = Pattern(SEED).make(0, 4096)
    rc, out, err, _ = env.pipe(kas, data)
    check(rc == 0 and out == data, "echo after errors failed: %d %s" %
          (rc, err))

    # Orderly stop: both daemons exit 0 (checked by stop()).
    agent.stop()
    kas.proc.wait_log(r"event=agent_disconnected ", 2, scaled(10))
    kas.proc.stop()


if __name__ == "__main__":
    harness.run([test_basic], bound=60)
