"""`kasctl kubeconfig`: the kubeconfig it prints is one kubectl reads and
uses, and its credential is what the kas gateway expects.

jwt:      --secret-file --user --group: `kubectl config view --raw -o json`
          parses the output into one cluster, user and context (current),
          server URL + "/k8s-proxy", the CA file inlined byte for byte as
          certificate-authority-data; the token is an HS256 JWT that
          verifies here with the API secret (HMAC computed by Python, not
          by the library) and carries aud gitlab-kas, agent_id and agents
          = the agent, user and groups, a one-hour lifetime by default or
          --ttl; `kasctl token` with the same identity options mints the
          same claims (round trip of both minting paths).
pat:      --pat-file: the user token becomes "pat:<agent>:<token>";
          --name names cluster, user and context.
kubectl:  kubectl itself, against a TLS listener standing in for the
          gateway (certificate from the openssl program, trusted only
          through the inlined CA data): `kubectl version` requests
          <prefix>/k8s-proxy/version with "Authorization: Bearer <token>"
          for both kubeconfigs. (`kubectl get --raw PATH` is not used: it
          requests PATH from the host's root, ignoring the server URL's
          path, so it cannot go through /k8s-proxy.)
refusals: bad option combinations, a bad --server, a CA file that is not
          PEM certificates, a token file with spaces, bad names: exit 2,
          a message, nothing on stdout; the secret and tokens never
          appear on stderr. http:// works with a warning.
Exits 77 (skip) when kubectl or openssl is missing.
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time

import harness
from harness import AGENT_ID, check, log, scaled


def require(name, why):
    if not shutil.which(name):
        print("SKIP: %s is not installed; it is needed %s" % (name, why))
        print("SKIP: " + "*" * 60)
        sys.stdout.flush()
        sys.exit(harness.SKIP)


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def secret_bytes(env):
    """The API secret as kasctl reads it (one trailing newline dropped)."""
    with open(env.secret_file, "rb") as f:
        data = f.read()
    if data.endswith(b"\n"):
        data = data[:-1]
    if data.endswith(b"\r"):
        data = data[:-1]
    return data


def verify_jwt(env, token):
    """Checks the HS256 signature with the API secret and returns the
    claims."""
    parts = token.split(".")
    check(len(parts) == 3, "token is not a compact JWT: %d parts" %
          len(parts))
    header = json.loads(b64url_decode(parts[0]))
    check(header.get("alg") == "HS256", "JWT alg is %r" % header.get("alg"))
    mac = hmac.new(secret_bytes(env), ("%s.%s" % (parts[0], parts[1]))
                   .encode(), hashlib.sha256).digest()
    check(hmac.compare_digest(mac, b64url_decode(parts[2])),
          "the JWT does not verify with the API secret")
    return json.loads(b64url_decode(parts[1]))


def make_cert(env):
    """A self-signed P-256 certificate for 127.0.0.1 (SAN: kubectl checks
    only the SAN), CA:TRUE so it is its own trust anchor."""
    cert, key = env.path("gw.crt"), env.path("gw.key")
    r = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", key, "-out", cert], capture_output=True,
        timeout=scaled(20))
    check(r.returncode == 0, "openssl req failed: %s" %
          r.stderr.decode(errors="replace")[-300:])
    return cert, key


def kasctl(env, args, ok=True):
    """Runs kasctl; returns (rc, stdout text, stderr text)."""
    r = subprocess.run([env.kasctl_bin] + list(args), capture_output=True,
                       timeout=scaled(20))
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(
        errors="replace")
    if ok:
        check(r.returncode == 0, "kasctl %s failed (exit %d): %s" %
              (args[0], r.returncode, err.strip()))
    return r.returncode, out, err


def kubectl(env, args, timeout=None):
    r = subprocess.run(
        ["kubectl"] + list(args), capture_output=True,
        timeout=timeout or scaled(40),
        env=dict(os.environ, HOME=env.dir, KUBECONFIG=env.path("none")))
    return r.returncode, r.stdout.decode(errors="replace"), \
        r.stderr.decode(errors="replace")


def view(env, kc_path):
    """The kubeconfig as kubectl understands it (JSON)."""
    rc, out, err = kubectl(env, ["--kubeconfig", kc_path, "config", "view",
                                 "--raw", "-o", "json"])
    check(rc == 0, "kubectl config view refused the kubeconfig: %s" %
          err.strip())
    return json.loads(out)


def only(cfg):
    """(name, server, ca_data, token) of a one-entry kubeconfig."""
    for key in ("clusters", "users", "contexts"):
        check(len(cfg.get(key) or []) == 1, "%s: %r" % (key, cfg.get(key)))
    cl, us, cx = cfg["clusters"][0], cfg["users"][0], cfg["contexts"][0]
    name = cfg.get("current-context")
    check(name and cl["name"] == name and us["name"] == name and
          cx["name"] == name, "names do not line up: %r" % cfg)
    check(cx["context"] == {"cluster": name, "user": name},
          "context %r" % cx["context"])
    check(cfg.get("apiVersion") == "v1" and cfg.get("kind") == "Config",
          "apiVersion/kind %r/%r" % (cfg.get("apiVersion"), cfg.get("kind")))
    return (name, cl["cluster"]["server"],
            cl["cluster"].get("certificate-authority-data"),
            us["user"]["token"])


def test_jwt(env):
    require("kubectl", "to read the kubeconfig")
    require("openssl", "to make a test certificate")
    cert, _ = make_cert(env)
    base = ["kubeconfig", "--server", "https://127.0.0.1:8443/",
            "--agent", str(AGENT_ID), "--ca-file", cert,
            "--secret-file", env.secret_file, "--user", "alice",
            "--group", "dev", "--group", "ops team"]
    t0 = int(time.time())
    _, out, err = kasctl(env, base)
    check(err == "", "unexpected stderr: %r" % err)
    kc = env.write("alice.yaml", out)
    name, server, ca, token = only(view(env, kc))
    log("kubectl read context %s, server %s", name, server)
    check(name == "kas-agent-%d" % AGENT_ID, "default name %r" % name)
    check(server == "https://127.0.0.1:8443/k8s-proxy", "server %r" % server)
    with open(cert, "rb") as f:
        check(base64.b64decode(ca) == f.read(),
              "certificate-authority-data is not the CA file")

    claims = verify_jwt(env, token)
    log("JWT claims: %s", json.dumps(claims, sort_keys=True))
    check(claims["aud"] == "gitlab-kas", "aud %r" % claims.get("aud"))
    check(claims["agent_id"] == AGENT_ID and claims["agents"] == [AGENT_ID],
          "agent claims %r" % claims)
    check(claims["user"] == "alice" and
          claims["groups"] == ["dev", "ops team"], "identity %r" % claims)
    check(claims["exp"] - claims["iat"] == 3600, "default lifetime %d" %
          (claims["exp"] - claims["iat"]))
    check(t0 - 5 <= claims["iat"] <= time.time() + 5, "iat %r" %
          claims["iat"])

    _, out, _ = kasctl(env, base + ["--ttl", "120"])
    claims2 = verify_jwt(env, only(view(env, env.write("b.yaml", out)))[3])
    check(claims2["exp"] - claims2["iat"] == 120, "--ttl 120 gave %d" %
          (claims2["exp"] - claims2["iat"]))

    # kasctl token with the same identity: the same claims.
    _, out, _ = kasctl(env, ["token", "--secret-file", env.secret_file,
                             "--agent", str(AGENT_ID), "--k8s-agent",
                             str(AGENT_ID), "--user", "alice", "--group",
                             "dev", "--group", "ops team", "--ttl", "3600"])
    minted = verify_jwt(env, out.strip())
    for k in ("iat", "nbf", "exp"):
        claims.pop(k)
        minted.pop(k)
    check(minted == claims, "kasctl token %r != kubeconfig %r" %
          (minted, claims))
    # Without identity options, token carries none of these claims.
    _, out, _ = kasctl(env, ["token", "--secret-file", env.secret_file])
    plain = verify_jwt(env, out.strip())
    check(not {"agents", "agent_id", "user", "groups"} & set(plain),
          "plain token has identity claims: %r" % plain)


def test_pat(env):
    require("kubectl", "to read the kubeconfig")
    pat = "glpat-" + base64.b32encode(os.urandom(15)).decode().lower()
    pat_file = env.write("user.pat", pat + "\n")
    _, out, err = kasctl(env, ["kubeconfig", "--server",
                               "https://kas.example.com/prefix",
                               "--agent", "42", "--pat-file", pat_file,
                               "--name", "prod_eu-1.kas"])
    check(pat not in err, "the token appears on stderr")
    name, server, ca, token = only(view(env, env.write("pat.yaml", out)))
    check(name == "prod_eu-1.kas", "name %r" % name)
    check(server == "https://kas.example.com/prefix/k8s-proxy",
          "server %r" % server)
    check(ca is None, "CA data without --ca-file")
    check(token == "pat:42:" + pat, "token %r" % token)
    # The hash kasd's user-token file wants, from the same file.
    r = subprocess.run([env.kasctl_bin, "hash-token"], input=pat.encode(),
                       capture_output=True, timeout=scaled(10))
    check(r.stdout.decode().strip() ==
          hashlib.sha256(pat.encode()).hexdigest(), "hash-token mismatch")


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers GET .../version like an API server and records the path and
    the Authorization field of every request."""
    protocol_version = "HTTP/1.1"
    seen = []

    def do_GET(self):
        Recorder.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps({"major": "1", "minor": "32",
                           "gitVersion": "v1.32.0-recorder"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


def test_kubectl(env):
    require("kubectl", "to use the kubeconfig")
    require("openssl", "to make a test certificate")
    cert, key = make_cert(env)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    port = srv.server_address[1]
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        pat = "pat-" + base64.b32encode(os.urandom(10)).decode().lower()
        pat_file = env.write("user.pat", pat)
        cases = [
            ("jwt", "https://127.0.0.1:%d" % port, "/k8s-proxy/version",
             ["--secret-file", env.secret_file, "--user", "alice"]),
            ("pat", "https://127.0.0.1:%d/gw/" % port,
             "/gw/k8s-proxy/version", ["--pat-file", pat_file]),
        ]
        for what, url, want_path, args in cases:
            _, out, _ = kasctl(env, ["kubeconfig", "--server", url,
                                     "--agent", str(AGENT_ID),
                                     "--ca-file", cert] + args)
            kc = env.write(what + ".yaml", out)
            token = only(view(env, kc))[3]
            Recorder.seen.clear()
            rc, out, err = kubectl(env, ["--kubeconfig", kc, "--cache-dir",
                                         env.path("cache"),
                                         "--request-timeout", "20s",
                                         "version", "-o", "json"])
            check(rc == 0, "kubectl version (%s) failed: %s" %
                  (what, err.strip()))
            got = json.loads(out).get("serverVersion", {}).get("gitVersion")
            check(got == "v1.32.0-recorder", "kubectl printed %r" % out)
            check(Recorder.seen, "the listener saw no request")
            for path, authz in Recorder.seen:
                log("%s: kubectl requested %s", what, path)
                check(path.split("?")[0] == want_path,
                      "kubectl requested %r, want %r" % (path, want_path))
                check(authz == "Bearer " + token,
                      "kubectl did not send the kubeconfig's token")
            if what == "pat":
                check(token == "pat:%d:%s" % (AGENT_ID, pat), "pat token")
    finally:
        srv.shutdown()
        srv.server_close()


def test_refusals(env):
    require("openssl", "to make a test certificate")
    cert, key = make_cert(env)
    secret = secret_bytes(env).decode()
    pat = "pat-secret-" + base64.b32encode(os.urandom(10)).decode().lower()
    pat_file = env.write("user.pat", pat)
    spaced = env.write("spaced.pat", "two words")
    srv = ["--server", "https://127.0.0.1:1"]
    jwt = ["--secret-file", env.secret_file, "--user", "alice"]
    a = ["--agent", str(AGENT_ID)]
    bad = [
        (srv + a, "--secret-file"),
        (srv + a + jwt + ["--pat-file", pat_file], "--pat-file"),
        (srv + a + ["--secret-file", env.secret_file], "--user"),
        (srv + a + ["--pat-file", pat_file, "--user", "x"], "--pat-file"),
        (srv + a + ["--pat-file", pat_file, "--ttl", "60"], "--pat-file"),
        (a + jwt, "--server"),
        (srv + jwt, "--agent"),
        (srv + a + ["--agent", "8"] + jwt, "--agent"),
        (srv + ["--agent", "0"] + jwt, "--agent"),
        (srv + ["--agent", "x7"] + jwt, "--agent"),
        (srv + a + jwt + ["--k8s-agent", "7"], "--k8s-agent"),
        (["--server", "ftp://127.0.0.1:1"] + a + jwt, "--server"),
        (["--server", "127.0.0.1:1"] + a + jwt, "--server"),
        (["--server", "https://127.0.0.1:1/?x=1"] + a + jwt, "--server"),
        (["--server", "https://127.0.0.1:1/#f"] + a + jwt, "--server"),
        (["--server", "https://u:pw-in-url@127.0.0.1:1"] + a + jwt,
         "--server"),
        (["--server", "https://127.0.0.1:1/a b"] + a + jwt, "--server"),
        (["--server", "https://"] + a + jwt, "--server"),
        (srv + a + jwt + ["--ca-file", key], "--ca-file"),
        (srv + a + jwt + ["--ca-file", env.secret_file], "--ca-file"),
        (srv + a + jwt + ["--ca-file", env.path("absent")], "absent"),
        (srv + a + ["--pat-file", spaced], "--pat-file"),
        (srv + a + ["--pat-file", env.path("absent")], "absent"),
        (srv + a + jwt + ["--name", "has space"], "--name"),
        (srv + a + jwt + ["--name", ""], "--name"),
        (srv + a + jwt + ["--name", "x" * 64], "--name"),
        (srv + a + ["--secret-file", env.secret_file, "--user", " alice"],
         "--user"),
        (srv + a + ["--secret-file", env.secret_file, "--user", "al\nice"],
         "--user"),
        (srv + a + jwt + ["--group", "x" * 256], "--group"),
        (srv + a + jwt + sum([["--group", "g%d" % i] for i in range(33)],
                             []), "--group"),
        (srv + a + jwt + ["extra"], "unexpected argument"),
    ]
    for args, word in bad:
        rc, out, err = kasctl(env, ["kubeconfig"] + args, ok=False)
        check(rc == 2, "kasctl kubeconfig %r: exit %d, want 2 (%s)" %
              (args, rc, err.strip()))
        check(out == "", "kasctl kubeconfig %r printed %r" % (args, out))
        check(word in err, "kasctl kubeconfig %r: message %r lacks %r" %
              (args, err.strip(), word))
        check(secret not in err and pat not in err and
              "pw-in-url" not in err, "a secret appears on stderr")
    log("%d refused invocations, each with exit 2 and a message", len(bad))
    # The same identity checks for kasctl token.
    for args in (["--user", ""], ["--group", "a\tb"], ["--k8s-agent", "-1"]):
        rc, out, err = kasctl(env, ["token", "--secret-file",
                                    env.secret_file] + args, ok=False)
        check(rc == 2 and out == "", "kasctl token %r: exit %d" % (args, rc))
    # Plain http:// works, with a warning.
    rc, out, err = kasctl(env, ["kubeconfig", "--server",
                                "http://127.0.0.1:1"] + a + jwt)
    check("https://" in err and "warning" in err, "no warning: %r" % err)
    check('server: "http://127.0.0.1:1/k8s-proxy"' in out, out)


if __name__ == "__main__":
    harness.run([test_jwt, test_pat, test_kubectl, test_refusals], bound=120)
