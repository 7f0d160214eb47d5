# frozen_string_literal: true

# Each error class, provoked for real: wrong credentials, a token for
# another agent, an agent that is not connected (kasd --route-timeout 1),
# an unknown service, a timeout, a peer that does not speak the protocol,
# nothing listening, an upstream that is down. Messages are the library's.
require_relative "test_helper"

class ErrorsTest < Minitest::Test
  # "down": an HTTP service whose upstream port has nothing listening.
  DOWN_PORT = TCPServer.new("127.0.0.1", 0).then { |s| s.addr[1].tap { s.close } }
  CLUSTER = KRTest.cluster(route_timeout: 1, services: { "down" => "http://127.0.0.1:#{DOWN_PORT}" })
  CLIENT = CLUSTER.client

  def web(client = CLIENT, agent: KRTest::AGENT_ID, service: "web", **opts)
    client.request(agent: agent, service: service, path: "/status?code=200", **opts)
  end

  def assert_library_error(klass, name_pattern)
    e = assert_raises(klass) { yield }
    assert_instance_of klass, e if klass != KasRoute::Error
    assert_match name_pattern, e.name
    assert_equal e.name, KasRoute::Native.kr_err_name(e.code)
    refute_empty e.message
    e
  end

  # Credentials are refused by a kasd of their own: kas throttles an
  # address after repeated failures, and every test here comes from
  # 127.0.0.1.
  AUTH_KAS_URL = CLUSTER.spare_kas

  def test_wrong_secret_is_unauthorized
    c = KasRoute::Client.new(url: AUTH_KAS_URL, secret: SecureRandom.hex(32))
    e = assert_library_error(KasRoute::Unauthorized, /\AAUTH\z/) { web(c) }
    $stdout.puts "  Unauthorized: #{e.message}"
  ensure
    c&.close
  end

  def test_bad_token_is_unauthorized
    c = KasRoute::Client.new(url: AUTH_KAS_URL, token: "not.a.jwt")
    assert_library_error(KasRoute::Unauthorized, /\AAUTH\z/) { c.open_stream(agent: KRTest::AGENT_ID, service: "echo") }
  ensure
    c&.close
  end

  def test_token_for_another_agent
    c = KasRoute::Client.new(url: CLUSTER.api_url, token: CLUSTER.token("--agent", "8"))
    begin
      web(c)
    rescue KasRoute::Unauthorized => e
      assert_includes %w[AUTH PERM], e.name
      $stdout.puts "  #{e.class}: #{e.message}"
      return
    end
    skip "kasd's API listener does not enforce the token's \"agents\" claim (the HTTP gateway does)"
  ensure
    c&.close
  end

  def test_agent_not_connected
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    e = assert_library_error(KasRoute::AgentNotConnected, /\ANOTCONN\z/) { web(agent: 999) }
    assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0, :<, KRTest.scaled(10)
    assert_library_error(KasRoute::AgentNotConnected, /\ANOTCONN\z/) do
      CLIENT.open_stream(agent: 999, service: "echo")
    end
    $stdout.puts "  AgentNotConnected: #{e.message}"
  end

  def test_unknown_service
    e = assert_library_error(KasRoute::UnknownService, /\ANOSERVICE\z/) { web(service: "nope") }
    assert_library_error(KasRoute::UnknownService, /\ANOSERVICE\z/) do
      CLIENT.open_stream(agent: KRTest::AGENT_ID, service: "nope")
    end
    $stdout.puts "  UnknownService: #{e.message}"
  end

  # /slow sends its head and a first chunk, then nothing for 30 s.
  def test_timeout_while_reading_a_body
    chunks = []
    e = assert_library_error(KasRoute::Timeout, /\ATIMEDOUT\z/) do
      CLIENT.request(agent: KRTest::AGENT_ID, service: "web", path: "/slow?hold=30", timeout: 0.5) { |c| chunks << c }
    end
    assert_equal ["first\n"], chunks
    assert_equal 200, web.status # the client is fine afterwards
    $stdout.puts "  Timeout: #{e.message}"
  end

  # A server that answers the connection with bytes that are not the
  # protocol's.
  def test_protocol_error
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    th = Thread.new do
      2.times do
        sock = server.accept
        sock.write("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + ("\xff" * 64).b)
        sock.close_write
        begin
          sock.read
        rescue SystemCallError
          nil
        end
        sock.close
      end
    rescue IOError, SystemCallError
      nil
    end
    c = KasRoute::Client.new(url: "tcp://127.0.0.1:#{port}", secret: CLUSTER.secret, timeout: KRTest.scaled(10))
    e = assert_raises(KasRoute::ProtocolError, KasRoute::ConnectionError) { c.agents }
    $stdout.puts "  #{e.class} (#{e.name}): #{e.message}"
    assert_instance_of KasRoute::ProtocolError, e
  ensure
    c&.close
    server&.close
    th&.kill
  end

  def test_nothing_listening_is_a_connection_error
    s = TCPServer.new("127.0.0.1", 0)
    port = s.addr[1]
    s.close
    c = KasRoute::Client.new(url: "tcp://127.0.0.1:#{port}", secret: CLUSTER.secret, timeout: KRTest.scaled(10))
    e = assert_library_error(KasRoute::ConnectionError, /\A(IO|CLOSED|RESET)\z/) { web(c) }
    $stdout.puts "  ConnectionError: #{e.message}"
  ensure
    c&.close
  end

  def test_tls_to_a_plain_listener_is_a_connection_error
    c = KasRoute::Client.new(url: CLUSTER.api_url.sub("tcp://", "tls://"), secret: CLUSTER.secret,
                             tls: { verify: false }, timeout: KRTest.scaled(10))
    assert_raises(KasRoute::ConnectionError, KasRoute::ProtocolError) { web(c) }
  ensure
    c&.close
  end

  def test_missing_ca_file
    assert_raises(KasRoute::Error) do
      KasRoute::Client.new(url: CLUSTER.api_url.sub("tcp://", "tls://"), secret: CLUSTER.secret,
                           tls: { ca_file: "/nonexistent/ca.pem" })
    end
  end

  def test_upstream_down
    e = assert_library_error(KasRoute::UpstreamError, /\AUPSTREAM\z/) { web(service: "down") }
    $stdout.puts "  UpstreamError: #{e.message}"
  end

  def test_errors_do_not_break_the_client
    5.times do
      assert_raises(KasRoute::UnknownService) { web(service: "nope") }
      assert_equal 200, web.status
    end
  end
end
