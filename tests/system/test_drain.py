"""SIGTERM drains without losing in-flight bytes.

A kasctl pipe streams 64 MiB through kas and the agent to the echo
upstream. The transfer is held at 8 MiB until the echo of at least 4 MiB
came back (so the stream is certainly in flight), then the daemon gets
SIGTERM; once it logged that it is draining the rest is sent. The echo must
be complete and byte-exact, kasctl must exit 0, and the daemon must exit 0
once the stream is done (well within --drain-grace 30).

kas_sigterm:    kasd is drained.
kas_drain_turns_away:  a client that connects while kasd drains is turned
                away promptly (exit 1), not left hanging.
agent_sigterm:  agentd is drained; afterwards the agent is gone for kas
                and a new stream gets NOTCONN.
"""

import signal
import threading
import time
import zlib

import harness
from harness import MiB, Pattern, check, log, scaled

SEED = 0xD7A1_0064
TOTAL = 64 * MiB
PAUSE_AT = 8 * MiB
ECHOED_BEFORE_SIGNAL = 4 * MiB


class PipeTransfer:
    CHUNK = 256 * 1024

    def __init__(self, env, kas, pat):
        self.p = env.open_pipe(kas)
        self.pat = pat
        self.sent = 0
        self.recv = 0
        self.crc_sent = 0
        self.crc_recv = 0
        self.error = None
        self.go = threading.Event()
        self.tx = threading.Thread(target=self._send, daemon=True)
        self.rx = threading.Thread(target=self._recv, daemon=True)
        self.tx.start()
        self.rx.start()

    def _send(self):
        f = self.p.popen.stdin
        try:
            while self.sent < TOTAL:
                if self.sent >= PAUSE_AT and not self.go.is_set():
                    if not self.go.wait(scaled(60)):
                        raise RuntimeError("never released")
                c = self.pat.chunk(self.sent, min(self.CHUNK,
                                                  TOTAL - self.sent))
                f.write(c)
                self.crc_sent = zlib.crc32(c, self.crc_sent)
                self.sent += len(c)
            f.close()
        except Exception as e:
            self.error = self.error or "writing to kasctl after %d bytes: " \
                "%r" % (self.sent, e)

    def _recv(self):
        f = self.p.popen.stdout
        try:
            while True:
                b = f.read1(1 << 20)
                if not b:
                    break
                self.crc_recv = zlib.crc32(b, self.crc_recv)
                self.recv += len(b)
        except Exception as e:
            self.error = self.error or "reading kasctl after %d bytes: " \
                "%r" % (self.recv, e)

    def finish(self, timeout):
        self.tx.join(timeout)
        self.rx.join(timeout)
        check(not self.rx.is_alive(), "the stream did not end within "
              "%.0f s (sent %d, echoed %d of %d)" % (timeout, self.sent,
                                                     self.recv, TOTAL))
        rc = self.p.wait_exit(scaled(10))
        check(self.error is None, self.error or "")
        check(rc == 0, "kasctl pipe exit %d after %d bytes sent, %d of %d "
              "echoed: %s" % (rc, self.sent, self.recv, TOTAL,
                              self.p.stderr().strip()))
        check(self.recv == TOTAL, "echoed %d bytes of %d" % (self.recv,
                                                            TOTAL))
        check(self.crc_recv == self.crc_sent, "echo differs from the data "
              "(crc %08x != %08x)" % (self.crc_recv, self.crc_sent))


def start(env):
    log("seed %#x", SEED)
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas = env.start_kasd(tokens, route_timeout=1, drain_grace=30)
    agent = env.start_agentd(kas, token_file, {"echo": echo}, connections=2,
                             drain_grace=30)
    x = PipeTransfer(env, kas, Pattern(SEED))
    harness.wait_until(lambda: x.recv >= ECHOED_BEFORE_SIGNAL or x.error,
                       scaled(30), "the first %d MiB of echo" %
                       (ECHOED_BEFORE_SIGNAL // MiB))
    check(x.error is None, x.error or "")
    return kas, agent, x


def test_kas_sigterm(env):
    kas, agent, x = start(env)
    t0 = time.monotonic()
    kas.proc.signal(signal.SIGTERM)
    kas.proc.wait_log(r"event=draining ", 1, scaled(10))
    log("kasd draining with %d bytes sent, %d echoed", x.sent, x.recv)
    x.go.set()
    x.finish(scaled(60))
    log("%d MiB echoed byte-exact across kasd's drain", TOTAL // MiB)
    rc = kas.proc.wait_exit(scaled(15))
    log("kasd exited %d, %.2f s after SIGTERM", rc, time.monotonic() - t0)
    kas.proc.check_exit(rc)
    check(kas.proc.count_log(r"event=drain_timeout") == 0,
          "kasd hit its drain timeout")


def test_kas_drain_turns_away(env):
    """A client connecting while kasd drains (a stream still open) gets a
    prompt error instead of waiting on a listener nobody serves."""
    kas, agent, x = start(env)
    kas.proc.signal(signal.SIGTERM)
    kas.proc.wait_log(r"event=draining ", 1, scaled(10))
    late = None
    try:
        rc, _, err, dt = env.pipe(kas, b"late\n", timeout=scaled(5))
        log("a client arriving during the drain: exit %d after %.2f s: %s",
            rc, dt, err.strip())
        if rc != 1:
            late = "exit %d: %s" % (rc, err)
    except harness.TestFailure:
        late = "no answer within %.0f s: kasd keeps its listening socket " \
            "open while draining, so the kernel accepts the connection " \
            "and nobody serves it" % scaled(5)
        log("a client arriving during the drain: %s", late)
    x.go.set()
    problems = []
    if late:
        problems.append("a client connecting during the drain: %s" % late)
    try:
        x.finish(scaled(60))
        kas.proc.check_exit(kas.proc.wait_exit(scaled(15)))
    except harness.TestFailure as e:
        problems.append("the stream in flight: %s" % e)
    check(not problems, "; ".join(problems))


def test_agent_sigterm(env):
    kas, agent, x = start(env)
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    agent.wait_log(r"event=signal signal=TERM action=drain", 1, scaled(10))
    log("agentd draining with %d bytes sent, %d echoed", x.sent, x.recv)
    x.go.set()
    x.finish(scaled(60))
    log("%d MiB echoed byte-exact across agentd's drain", TOTAL // MiB)
    rc = agent.wait_exit(scaled(15))
    log("agentd exited %d, %.2f s after SIGTERM", rc, time.monotonic() - t0)
    agent.check_exit(rc)
    kas.proc.wait_log(r"event=agent_disconnected ", 2, scaled(10))
    rc, _, err, _ = env.pipe(kas, b"x\n")
    check(rc == 1 and "NOTCONN" in err,
          "a stream after the agent drained: exit %d: %s" % (rc, err))
    kas.proc.stop()


if __name__ == "__main__":
    harness.run([test_kas_sigterm, test_kas_drain_turns_away,
                 test_agent_sigterm], bound=120)
