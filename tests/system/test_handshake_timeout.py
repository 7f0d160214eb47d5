"""Connections that never complete their handshake are closed on time.

kasd runs with --handshake-timeout 1. Raw TCP sockets connect to its agent
and API ports and send nothing, or half a HELLO frame. Each must be closed
by kasd between ~1 s and 3 s after connecting, with a GOAWAY TIMEOUT frame
before the close (kasd's own HELLO may precede it). A full agent still
connects and serves afterwards.
"""

import socket
import struct
import threading
import time

import harness
from harness import check, log, scaled

HANDSHAKE_TIMEOUT = 1
FRAME_HELLO = 7
FRAME_GOAWAY = 6
CODE_TIMEOUT = 8


def half_hello():
    """The 9-byte header of a 40-byte HELLO and only 8 payload bytes."""
    hdr = struct.pack(">I", 40)[1:] + bytes([FRAME_HELLO, 0]) + \
        struct.pack(">I", 0)
    return hdr + b"KRMX" + bytes([1, 1, 1, 0])


def frames(data):
    """(type, payload) of the whole frames in data."""
    out, off = [], 0
    while off + 9 <= len(data):
        n = int.from_bytes(data[off:off + 3], "big")
        if off + 9 + n > len(data):
            break
        out.append((data[off + 3], data[off + 9:off + 9 + n]))
        off += 9 + n
    return out


class Probe:
    def __init__(self, label, port, payload):
        self.label = label
        self.data = b""
        self.error = None
        self.closed_after = None
        self.s = socket.create_connection(("127.0.0.1", port),
                                          timeout=scaled(10))
        self.t0 = time.monotonic()
        if payload:
            self.s.sendall(payload)
        self.s.settimeout(scaled(10))
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while True:
                b = self.s.recv(65536)
                if not b:
                    break
                self.data += b
        except ConnectionResetError:
            pass
        except socket.timeout:
            self.error = "still open after %.0f s" % scaled(10)
            return
        except Exception as e:
            self.error = repr(e)
            return
        self.closed_after = time.monotonic() - self.t0

    def verdict(self, lo, hi):
        self.t.join(scaled(12))
        self.s.close()
        if self.error:
            return self.error
        if not lo <= self.closed_after <= hi:
            return "closed after %.2f s, expected within [%.1f, %.1f]" % (
                self.closed_after, lo, hi)
        fr = frames(self.data)
        goaways = [p for t, p in fr if t == FRAME_GOAWAY]
        if not goaways:
            return "closed without a GOAWAY (frames: %s)" % [t for t, _ in fr]
        code = int.from_bytes(goaways[-1][4:8], "big")
        if code != CODE_TIMEOUT:
            return "GOAWAY code %d, expected TIMEOUT (%d)" % (code,
                                                             CODE_TIMEOUT)
        return None


def test_handshake_timeout(env):
    _, token_file, tokens = env.agent_credentials()
    echo = env.start_echo()
    kas = env.start_kasd(tokens, handshake_timeout=HANDSHAKE_TIMEOUT)
    probes = [Probe("agent port, silent", kas.agent_port, b""),
              Probe("agent port, half a HELLO", kas.agent_port, half_hello()),
              Probe("API port, silent", kas.api_port, b""),
              Probe("API port, half a HELLO", kas.api_port, half_hello())]
    bad = []
    for p in probes:
        why = p.verdict(HANDSHAKE_TIMEOUT - 0.1, 3 * scaled(1))
        log("%-26s closed after %s: %s", p.label,
            "%.2f s" % p.closed_after if p.closed_after else "-",
            why or "ok (GOAWAY TIMEOUT)")
        if why:
            bad.append("%s: %s" % (p.label, why))
    check(not bad, "; ".join(bad))
    # The listeners are unharmed.
    env.start_agentd(kas, token_file, {"echo": echo}, connections=1)
    rc, out, err, _ = env.pipe(kas, b"still here\n")
    check(rc == 0 and out == b"still here\n", "echo afterwards: %d %s" %
          (rc, err))


if __name__ == "__main__":
    harness.run([test_handshake_timeout], bound=60)
