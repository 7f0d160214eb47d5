# frozen_string_literal: true

# The examples in examples/ruby run against real upstreams through kasd and
# agentd: prometheus_query.rb against Debian's prometheus (scraping
# itself; skipped when prometheus is not installed) and k8s_watch.rb
# against tests/system/k8s_standin.py (a Kubernetes API stand-in that
# checks the bearer token it receives).
require_relative "test_helper"
require "net/http"

class ExamplesTest < Minitest::Test
  ROOT = File.expand_path("../../..", __dir__)
  LIB = File.expand_path("../lib", __dir__)
  K8S_TOKEN = "k8s-#{SecureRandom.hex(12)}"
  PROMETHEUS = ["/usr/bin/prometheus", *ENV["PATH"].to_s.split(":").map { |d| File.join(d, "prometheus") }]
               .find { |p| File.executable?(p) }

  def self.start_prometheus(cluster)
    3.times do |attempt|
      port = TCPServer.new("127.0.0.1", 0).then { |s| s.addr[1].tap { s.close } }
      cfg = cluster.write("prometheus-#{attempt}.yml", <<~YAML)
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: self
            static_configs:
              - targets: ['127.0.0.1:#{port}']
      YAML
      p = cluster.spawn("prometheus", [PROMETHEUS, "--config.file", cfg,
                                       "--storage.tsdb.path", cluster.path("tsdb-#{attempt}"),
                                       "--web.listen-address", "127.0.0.1:#{port}",
                                       "--log.level", "warn"], :helper)
      # Ready once its own "up" series exists (it scraped itself).
      up = KRTest.wait_until(KRTest.scaled(30), "prometheus to scrape itself", interval: 0.1) do
        next :gone unless p.alive?

        res = Net::HTTP.get_response(URI("http://127.0.0.1:#{port}/api/v1/query?query=up"))
        res.code == "200" && !JSON.parse(res.body)["data"]["result"].empty? && :up
      rescue SystemCallError, IOError, JSON::ParserError, Net::ReadTimeout
        nil
      end
      return port if up == :up
    end
    raise "prometheus did not start"
  end

  SERVICES = {
    "k8s" => lambda do |c|
      standin = File.join(File.dirname(ENV.fetch("HTTP_UPSTREAM", "")), "k8s_standin.py")
      KRTest.skip!("no #{standin}") unless File.file?(standin)
      "http://127.0.0.1:#{c.start_helper('k8s-standin', [c.python, standin, '--token', K8S_TOKEN, '--hold', '30'])}"
    end,
  }
  SERVICES["prom"] = ->(c) { "http://127.0.0.1:#{start_prometheus(c)}" } if PROMETHEUS
  CLUSTER = KRTest.cluster(http: true, services: SERVICES)

  def run_example(name, *args)
    env = { "KASROUTE_LIB" => ENV["KASROUTE_LIB"] }
    Open3.capture3(env, RbConfig.ruby, "-I", LIB, File.join(ROOT, "examples", "ruby", name),
                   "--kas", CLUSTER.api_url, "--secret-file", CLUSTER.secret_file,
                   "--agent", KRTest::AGENT_ID.to_s, *args)
  end

  def test_prometheus_query
    skip "prometheus is not installed (Debian package prometheus)" unless PROMETHEUS
    out, err, st = run_example("prometheus_query.rb", "--service", "prom", "--query", "up")
    assert st.success?, "exit #{st.inspect}: #{err}"
    assert_match(/\Aup\{instance="127\.0\.0\.1:\d+",job="self"\} 1 @\d+(\.\d+)?\n\z/, out)
  end

  def test_prometheus_query_unknown_service
    _, err, st = run_example("prometheus_query.rb", "--service", "nope")
    refute st.success?
    assert_match(/UnknownService/, err)
  end

  def test_k8s_watch_streams_events
    token_file = CLUSTER.write("k8s.token", K8S_TOKEN)
    out, err, st = run_example("k8s_watch.rb", "--service", "k8s", "--k8s-token-file", token_file,
                               "--events", "3", "--timeout", KRTest.scaled(20).to_s)
    assert st.success?, "exit #{st.inspect}: #{err}"
    lines = out.lines.map { |l| l.split.first(2) }
    assert_equal [%w[ADDED pods/pod-a], %w[ADDED pods/pod-b], %w[MODIFIED pods/pod-a]], lines, out
    standin = Dir[CLUSTER.path("*-k8s-standin.err")].map { |f| File.read(f) }.join
    refute_match(/VIOLATION/, standin)
  end
end
