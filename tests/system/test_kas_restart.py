"""kasd goes away and comes back on the same agent port: agentd reconnects
by itself (its backoff starts at about 1 s) and serves requests again.

term:   kasd is stopped with SIGTERM (drain, exit 0), then started again.
kill9:  kasd is killed with SIGKILL, then started again.
"""

import time

import harness
from harness import check, log, scaled, Pattern

SEED = 0x4E570A47
RECONNECT_LIMIT = 40  # seconds


def restart(env, how):
    log("seed %#x", SEED)
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas1 = env.start_kasd(tokens)
    agent = env.start_agentd(kas1, token_file, {"echo": echo}, connections=2)
    data = Pattern(SEED).make(0, 20000)
    rc, out, err, _ = env.pipe(kas1, data)
    check(rc == 0 and out == data, "echo via the first kasd: %d %s" %
          (rc, err))

    if how == "term":
        kas1.proc.stop()
    else:
        kas1.proc.kill9()
    t0 = time.monotonic()
    agent.wait_log(r"event=disconnected ", 2, scaled(10))
    check(agent.alive(), "agentd exited when kas went away")

    kas2 = env.start_kasd(tokens, agent_port=kas1.agent_port)
    env.wait_agent(kas2, 2, timeout=scaled(RECONNECT_LIMIT))
    log("agentd reconnected both tunnels %.2f s after kasd went away (%d "
        "reconnects scheduled)", time.monotonic() - t0,
        agent.count_log(r"event=reconnect_scheduled"))
    data = Pattern(SEED).make(777, 200000)
    rc, out, err, _ = env.pipe(kas2, data)
    check(rc == 0 and out == data, "echo via the restarted kasd: %d %s" %
          (rc, err))
    agent.stop()
    kas2.proc.stop()


def test_term(env):
    restart(env, "term")


def test_kill9(env):
    restart(env, "kill9")


if __name__ == "__main__":
    harness.run([test_term, test_kill9], bound=90)
