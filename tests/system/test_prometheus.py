"""A real Prometheus behind the gateway: prometheus (Debian 2.42) scrapes
itself on a loopback port; agentd serves it as service "prom"
(http://127.0.0.1:P); queries through kasd's HTTP gateway give the same
JSON as the same queries asked directly:

  GET  /api/v1/query?query=up&time=T
  GET  /api/v1/query_range?query=scrape_samples_scraped
       &start=T-30&end=T&step=1
  POST /api/v1/query (form body with Content-Length)
  GET  with Accept-Encoding: gzip (curl --compressed): the compressed
       body passes through and decodes to the same JSON
  GET  /api/v1/label/__name__/values (a larger answer)

T is fixed a few scrape intervals in the past, so both answers cover the
same, already ingested samples. Exits 77 (skip) when prometheus or curl is
not installed.
"""

import json
import subprocess
import time
import urllib.parse

import harness
from harness import AGENT_ID, check, log, scaled

CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: self
    static_configs:
      - targets: ['127.0.0.1:%d']
"""


def start_prometheus(env, exe):
    """prometheus on a free loopback port; returns (proc, port) once it
    is ready and has scraped itself at least once."""
    for attempt in range(5):
        port = harness.free_port()
        cfg = env.write("prometheus-%d.yml" % attempt, CONFIG % port)
        p = env.spawn("prometheus", [
            exe, "--config.file", cfg,
            "--storage.tsdb.path", env.path("tsdb-%d" % attempt),
            "--web.listen-address", "127.0.0.1:%d" % port,
            "--log.level", "warn"], "helper")

        def ready():
            if not p.alive():
                return "exited"
            try:
                r = harness.http_request(port, "GET", "/-/ready",
                                         timeout=scaled(2))
                return "ready" if r.status == 200 else None
            except OSError:
                return None
        state = harness.wait_until(ready, scaled(30), "prometheus to be "
                                   "ready")
        if state == "ready":
            break
        if "address already in use" not in p.stderr():
            raise harness.TestFailure("prometheus exited: %s" %
                                      p.stderr()[-1000:])
    else:
        raise harness.TestFailure("prometheus found no free port")

    def scraped():
        r = harness.http_request(port, "GET", "/api/v1/query?query=up")
        return r.status == 200 and r.json()["data"]["result"]
    t0 = time.monotonic()
    harness.wait_until(scraped, scaled(30), "prometheus's first scrape",
                       interval=0.2)
    log("prometheus on port %d has scraped itself (%.1f s)", port,
        time.monotonic() - t0)
    return p, port


def test_prometheus(env):
    exe = harness.require_program("prometheus", "(apt-get install "
                                  "prometheus)")
    prom, port = start_prometheus(env, exe)
    _, token_file, tokens = env.agent_credentials()
    kas = env.start_kasd(tokens, route_timeout=5, http="http")
    agent = env.start_agentd(kas, token_file,
                             {"prom": "http://127.0.0.1:%d" % port},
                             connections=2)
    token = env.token(agents=[AGENT_ID])
    auth = {"Authorization": "Bearer " + token}
    base = "/api/v1/agents/%d/services/prom" % AGENT_ID

    # Let a few more scrapes happen, then fix T two seconds back: every
    # sample at or before T is ingested by then.
    t_first = time.time()
    harness.wait_until(lambda: time.time() > t_first + 4, scaled(6),
                       "four scrape intervals")
    T = round(time.time() - 2.0, 3)

    def both(method, path, body=None, headers=None):
        h = {"Content-Type": "application/x-www-form-urlencoded"} \
            if body is not None else {}
        h.update(headers or {})
        direct = harness.http_request(port, method, path, h, body)
        via = harness.http_request(kas, method, base + path,
                                   dict(h, **auth), body)
        check(direct.status == 200, "direct %s %s: %r" % (method, path,
                                                          direct))
        check(via.status == 200, "through kas %s %s: %r" % (method, path,
                                                            via))
        dj, vj = direct.json(), via.json()
        check(dj == vj, "%s %s: answers differ:\n direct %s\n via kas %s" %
              (method, path, json.dumps(dj)[:600], json.dumps(vj)[:600]))
        check(via.headers.get("Content-Type") ==
              direct.headers.get("Content-Type"), "Content-Type %r vs %r" %
              (via.headers.get("Content-Type"),
               direct.headers.get("Content-Type")))
        return vj

    q = urllib.parse.urlencode({"query": "up", "time": "%.3f" % T})
    j = both("GET", "/api/v1/query?" + q)
    res = j["data"]["result"]
    check(j["status"] == "success" and len(res) == 1 and
          res[0]["metric"].get("job") == "self" and res[0]["value"][1] == "1",
          "query up: %s" % json.dumps(j))
    log("query up at %.3f: %s", T, json.dumps(res))

    q = urllib.parse.urlencode({
        "query": "scrape_samples_scraped",
        "start": "%.3f" % (T - 30), "end": "%.3f" % T, "step": "1"})
    j = both("GET", "/api/v1/query_range?" + q)
    series = j["data"]["result"]
    points = sum(len(s["values"]) for s in series)
    check(j["status"] == "success" and series and points >= 3,
          "query_range: %s" % json.dumps(j)[:600])
    log("query_range: %d series, %d points, identical", len(series), points)

    body = urllib.parse.urlencode({
        "query": "count by (job) (up)", "time": "%.3f" % T}).encode()
    j = both("POST", "/api/v1/query", body=body)
    check(j["data"]["result"][0]["value"][1] == "1", "POST query: %s" %
          json.dumps(j))
    log("POST query with a form body: identical")

    j = both("GET", "/api/v1/label/__name__/values")
    check(len(j["data"]) > 50, "label values: only %d names" %
          len(j["data"]))
    log("label values: %d metric names, identical", len(j["data"]))

    # A gzip-encoded answer passes through (curl decodes it).
    harness.require_program("curl", "(apt-get install curl)")
    q = urllib.parse.urlencode({"query": "up", "time": "%.3f" % T})
    outs = []
    for url, hdrs in (("http://127.0.0.1:%d/api/v1/query?%s" % (port, q),
                       []),
                      (kas.http_url + base + "/api/v1/query?" + q,
                       ["-H", "Authorization: Bearer " + token])):
        r = subprocess.run(["curl", "-sS", "--compressed", "-D", "-", "-H",
                            "Accept-Encoding: gzip", url] + hdrs,
                           capture_output=True, timeout=scaled(20))
        check(r.returncode == 0, "curl --compressed: %s" % r.stderr)
        head, body = r.stdout.split(b"\r\n\r\n", 1)
        check(b"content-encoding: gzip" in head.lower(),
              "no gzip answer from %s: %r" % (url, head))
        outs.append(json.loads(body))
    check(outs[0] == outs[1], "gzip answers differ: %r vs %r" % tuple(outs))
    log("gzip-encoded answer passes through")

    agent.stop()
    kas.proc.stop()
    prom.stop()


if __name__ == "__main__":
    harness.require_program("prometheus", "(Debian package prometheus; "
                            "scripts/run installs it)")
    harness.run([test_prometheus], bound=90)
