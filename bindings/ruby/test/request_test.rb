# frozen_string_literal: true

# HTTP requests through kas -> agentd -> tests/system/http_upstream.py:
# whole responses, streamed responses, uploads, header fields both ways, and
# the agent listing.
require_relative "test_helper"
require "stringio"

class RequestTest < Minitest::Test
  CLUSTER = KRTest.cluster
  CLIENT = CLUSTER.client

  def client = CLIENT

  def get(path, **opts, &block)
    client.request(agent: KRTest::AGENT_ID, service: "web", path: path, **opts, &block)
  end

  def test_small_get_is_byte_exact
    res = get("/bytes?n=1000")
    assert_equal 200, res.status
    assert_equal "1000", res["Content-Length"]
    assert_equal "application/octet-stream", res.headers["content-type"]
    assert_equal Encoding::BINARY, res.body.encoding
    assert_equal CLUSTER.upstream_bytes(1000), res.body
    assert res.success?
  end

  def test_large_chunked_body_is_byte_exact
    n = 8 * KRTest::MiB
    res = get("/chunked?n=#{n}")
    assert_equal 200, res.status
    assert_equal n, res.body.bytesize
    assert_equal Digest::SHA256.hexdigest(CLUSTER.upstream_bytes(n)), Digest::SHA256.hexdigest(res.body)
  end

  def test_streamed_body_arrives_in_chunks
    n = 4 * KRTest::MiB
    chunks = []
    seen = nil
    res = get("/chunked?n=#{n}") do |chunk, response|
      seen ||= response.status
      chunks << chunk
    end
    assert_equal 200, seen
    assert_equal 200, res.status
    assert_nil res.body
    assert_operator chunks.size, :>, 1
    assert_equal CLUSTER.upstream_bytes(n), chunks.join
  end

  # /slow sends "first\n" and then holds the response open for 30 s: the
  # block sees the first chunk long before the body could have ended, and
  # leaving the block abandons the rest.
  def test_streamed_body_is_delivered_before_the_end
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    first = nil
    get("/slow?hold=30") do |chunk|
      first = chunk
      break
    end
    elapsed = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    assert_equal "first\n", first
    assert_operator elapsed, :<, KRTest.scaled(10)
    # The client goes on working after the abandoned response.
    assert_equal 200, get("/status?code=200").status
  end

  def test_method_path_and_header_fields_reach_the_upstream
    res = get("/headers?x=1&y=%20z", method: "PUT",
                                      headers: { "X-Trace" => "abc", "x-multi" => %w[one two] },
                                      body: "payload")
    assert_equal 200, res.status
    doc = JSON.parse(res.body)
    assert_equal "PUT", doc["method"]
    assert_equal "/headers?x=1&y=%20z", doc["path"]
    h = doc["headers"].map { |k, v| [k.downcase, v] }
    assert_includes h, %w[x-trace abc]
    assert_includes h, %w[x-multi one]
    assert_includes h, %w[x-multi two]
  end

  def test_upload_body_arrives_whole
    body = SecureRandom.random_bytes(3 * KRTest::MiB + 17)
    res = get("/upload", method: "POST", body: body, headers: [["content-type", "application/octet-stream"]])
    assert_equal 200, res.status
    doc = JSON.parse(res.body)
    assert_equal body.bytesize, doc["length"]
    assert_equal Digest::SHA256.hexdigest(body), doc["sha256"]
  end

  def test_upload_from_an_io
    body = SecureRandom.random_bytes(100_000)
    res = get("/upload", method: "POST", body: StringIO.new(body))
    assert_equal Digest::SHA256.hexdigest(body), JSON.parse(res.body)["sha256"]
  end

  def test_status_codes_are_responses_not_errors
    [204, 404, 418, 503].each do |code|
      res = get("/status?code=#{code}")
      assert_equal code, res.status
      assert_equal "", res.body
      refute res.success? unless code == 204
    end
  end

  def test_agents_lists_the_connected_agent
    agents = client.agents
    a = agents.find { |x| x.id == KRTest::AGENT_ID }
    refute_nil a, "agent #{KRTest::AGENT_ID} missing from #{agents.inspect}"
    assert_equal 2, a.connections
    assert_equal ["r1"], a.replicas.map(&:name)
    assert_equal 2, a.replicas.first.connections
    assert_kind_of Time, a.connected_since
    assert_operator a.connected_since, :<=, Time.now + 1
    assert_includes JSON.parse(client.agents_json).keys, "agents"
  end

  def test_token_credentials
    c = KasRoute::Client.new(url: CLUSTER.api_url, token: CLUSTER.token("--ttl", "600"))
    assert_equal 200, c.request(agent: KRTest::AGENT_ID, service: "web", path: "/status?code=200").status
  ensure
    c&.close
  end

  def test_arguments_are_checked
    assert_raises(ArgumentError) { KasRoute::Client.new(url: CLUSTER.api_url) }
    assert_raises(ArgumentError) { KasRoute::Client.new(url: CLUSTER.api_url, secret: "x" * 32, token: "a.b.c") }
    assert_raises(ArgumentError) { KasRoute::Client.new(url: CLUSTER.api_url, secret: CLUSTER.secret, tls: { cafile: "x" }) }
    assert_raises(ArgumentError) { get("/", timeout: 0) }
    assert_raises(ArgumentError) { get("/\0x") }
  end

  def test_closed_client_raises
    c = CLUSTER.client
    assert_equal 200, c.request(agent: KRTest::AGENT_ID, service: "web", path: "/status?code=200").status
    c.close
    c.close
    assert c.closed?
    e = assert_raises(KasRoute::Closed) { c.request(agent: KRTest::AGENT_ID, service: "web", path: "/") }
    assert_equal "CLOSED", e.name
  end
end
