"""An agent presenting a wrong token is refused and never registered.

refused:  kasd logs event=auth_failed for the agent connection, agentd is
          told UNAUTHORIZED, kasd never logs agent_connected, neither the
          wrong nor the valid token text appears in kasd's stderr, both
          daemons exit 0 on SIGTERM, and the rightful agent can connect
          afterwards.
notconn:  while the refused agent keeps retrying, a client stream to the
          agent id fails with NOTCONN (after the 1 s route timeout): the
          agent is not registered, and the client is not collateral damage
          of the agent's failures.
backoff:  after a refusal agentd waits (its reconnect backoff) before it
          dials again, instead of retrying in a tight loop.
"""

import base64
import os
import re

import harness
from harness import check, log, scaled


def setup(env):
    good, token_file, tokens = env.agent_credentials()
    wrong = "wrong-token-" + base64.b32encode(os.urandom(15)).decode().lower()
    wrong_file = env.write("wrong.token", wrong)
    echo = env.start_echo()
    kas = env.start_kasd(tokens, route_timeout=1)
    bad = env.start_agentd(kas, wrong_file, {"echo": echo}, connections=2,
                           name="bad", wait=False)
    kas.proc.wait_log(r'event=auth_failed [^\n]*kind="agent token"', 1,
                      scaled(10))
    bad.wait_log(r"event=goaway_received [^\n]*code=UNAUTHORIZED", 1,
                 scaled(10))
    return good, wrong, token_file, echo, kas, bad


def check_no_tokens(kas, *tokens):
    text = kas.proc.stderr()
    for t in tokens:
        check(t not in text, "a token text appears in kasd's log")


def test_refused(env):
    good, wrong, token_file, echo, kas, bad = setup(env)
    log("kasd refused the agent: %s", kas.proc.stderr().split(
        "event=auth_failed", 1)[1].splitlines()[0].strip())
    check(kas.proc.count_log(r"event=agent_connected") == 0,
          "kasd registered an agent that presented a wrong token")
    check(bad.alive(), "agentd died after being refused")
    bad.stop()
    log("kasd logged %d auth failures, %d throttled connections",
        kas.proc.count_log(r"event=auth_failed"),
        kas.proc.count_log(r"event=auth_throttled"))
    check(kas.proc.count_log(r"event=agent_connected") == 0,
          "kasd registered an agent that presented a wrong token")
    check_no_tokens(kas, wrong, good)

    # The rightful agent connects (possibly after the address's penalty
    # for the failures above, hence the long wait) and serves.
    env.start_agentd(kas, token_file, {"echo": echo}, connections=2,
                     wait=False)
    env.wait_agent(kas, 2, timeout=scaled(40))
    rc, out, err, _ = env.pipe(kas, b"hello\n")
    check(rc == 0 and out == b"hello\n",
          "echo through the rightful agent failed: exit %d: %s" % (rc, err))
    check_no_tokens(kas, wrong, good)


def test_notconn(env):
    good, wrong, _, _, kas, bad = setup(env)
    rc, out, err, dt = env.pipe(kas, b"hello\n")
    log("stream to the refused agent's id -> exit %d after %.2f s: %s", rc,
        dt, err.strip())
    check(rc == 1, "stream to the refused agent: exit %d (want 1): %s" %
          (rc, err))
    check("NOTCONN" in err, "stream to the refused agent did not fail with "
          "NOTCONN but: %r" % err.strip())
    check(kas.proc.count_log(r"event=agent_connected") == 0,
          "kasd registered an agent that presented a wrong token")
    check_no_tokens(kas, wrong, good)


def test_backoff(env):
    good, wrong, _, _, kas, bad = setup(env)
    # Let it retry for a while (long enough for two backoff rounds).
    harness.wait_until(lambda: bad.count_log(r"event=reconnect_scheduled")
                       >= 4, scaled(10), "agentd to schedule 4 reconnects")
    bad.stop()
    # Every dial after the first one per connection slot must follow a
    # scheduled (backed-off) reconnect: at each point of agentd's log,
    # established connections <= slots + reconnects scheduled so far.
    slots, dials, scheduled, worst = 2, 0, 0, 0
    for ln in bad.stderr().splitlines():
        if re.search(r"event=connected ", ln):
            dials += 1
        elif re.search(r"event=reconnect_scheduled ", ln):
            scheduled += 1
        worst = max(worst, dials - slots - scheduled)
    failures = kas.proc.count_log(r"event=auth_failed")
    throttled = kas.proc.count_log(r"event=auth_throttled")
    log("agentd: %d refused connections, %d backed-off reconnects; kasd: "
        "%d auth failures, %d throttled", dials, scheduled, failures,
        throttled)
    check(worst <= 0, "agentd redialled %d times without backing off after "
          "GOAWAY UNAUTHORIZED (retry storm: %d auth failures in kasd's "
          "log)" % (worst, failures))
    check_no_tokens(kas, wrong, good)


if __name__ == "__main__":
    harness.run([test_refused, test_notconn, test_backoff], bound=90)
