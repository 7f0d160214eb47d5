"""100 concurrent streams moving 1 GiB in total through kas, byte-exact.

One `kasctl forward` listener; 100 client connections each send ~10 MiB of
a deterministic pseudo-random pattern (each from its own offset) to the
echo upstream behind the agent and read the echo back. Each stream's echo
must match what it sent (length and CRC-32). The aggregate rate is
reported; it is information, not a pass criterion.
"""

import time

import harness
from harness import GiB, MiB, Pattern, StreamCheck, check, connect, log

SEED = 0x5EED0100
STREAMS = 100
TOTAL = GiB


def test_concurrency(env):
    log("seed %#x, %d streams, %d MiB in total", SEED, STREAMS, TOTAL // MiB)
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas = env.start_kasd(tokens)
    env.start_agentd(kas, token_file, {"echo": echo}, connections=2)
    _, port = env.start_forward(kas)

    pat = Pattern(SEED)
    sizes = [TOTAL // STREAMS + (1 if i < TOTAL % STREAMS else 0)
             for i in range(STREAMS)]
    budget = harness.scaled(150)
    t0 = time.monotonic()
    streams = []
    for i in range(STREAMS):
        s = connect(port)
        streams.append(StreamCheck(s, pat, i * 104729, sizes[i],
                                   budget).begin())
    for st in streams:
        st.join()
    dt = time.monotonic() - t0
    bad = [(i, st.verdict()) for i, st in enumerate(streams)
           if st.verdict()]
    moved = sum(st.recv for st in streams)
    log("%d/%d streams byte-exact; %.0f MiB echoed in %.2f s: %.1f MB/s "
        "through the tunnel (each direction)", STREAMS - len(bad), STREAMS,
        moved / MiB, dt, moved / dt / 1e6)
    for i, why in bad[:10]:
        log("stream %d: %s", i, why)
    check(not bad, "%d of %d streams failed" % (len(bad), STREAMS))
    check(moved == TOTAL, "moved %d bytes, expected %d" % (moved, TOTAL))
    # Everything closed: kas still serves a fresh stream.
    data = pat.make(7, 100000)
    rc, out, err, _ = env.pipe(kas, data)
    check(rc == 0 and out == data, "pipe after the load failed: %d %s" %
          (rc, err))


if __name__ == "__main__":
    harness.run([test_concurrency], bound=200)
