# frozen_string_literal: true

# Garbage collection: every operation under GC.stress (a collection at
# each allocation: a buffer or handle freed too early crashes or corrupts
# here), handles left to the collector are released, and many requests and
# streams dropped without #close do not make the process grow.
require_relative "test_helper"

class GcTest < Minitest::Test
  CLUSTER = KRTest.cluster

  def vm_rss_kib
    File.read("/proc/self/status")[/^VmRSS:\s+(\d+)/, 1].to_i
  end

  def test_everything_under_gc_stress
    GC.stress = true
    begin
      c = CLUSTER.client
      res = c.request(agent: KRTest::AGENT_ID, service: "web", path: "/headers?gc=1",
                      headers: { "x-a" => "1", "x-b" => %w[2 3] }, body: "abc", method: "POST")
      chunks = []
      c.request(agent: KRTest::AGENT_ID, service: "web", path: "/chunked?n=70000") { |ch| chunks << ch }
      s = c.open_stream(agent: KRTest::AGENT_ID, service: "echo")
      s.write("ping " * 1000)
      s.close_write
      echoed = s.read
      agents = c.agents
      e = assert_raises(KasRoute::UnknownService) { c.request(agent: KRTest::AGENT_ID, service: "nope", path: "/") }
      threads = Array.new(2) do |i|
        Thread.new { c.request(agent: KRTest::AGENT_ID, service: "web", path: "/bytes?n=#{100 + i}").body.bytesize }
      end
      sizes = threads.map(&:value)
    ensure
      GC.stress = false
    end
    assert_equal 200, res.status
    assert_equal "/headers?gc=1", JSON.parse(res.body)["path"]
    assert_equal 70_000, chunks.sum(&:bytesize)
    assert_equal "ping " * 1000, echoed
    assert_equal [KRTest::AGENT_ID], agents.map(&:id)
    assert_equal "NOSERVICE", e.name
    assert_equal [100, 101], sizes
    s.close
    c.close
  end

  # Clients, streams and responses never closed: the collector releases
  # them (FFI::AutoPointer), and the process stays flat.
  def test_dropped_handles_are_released
    round = lambda do |n|
      n.times do |i|
        c = CLUSTER.client if (i % 50).zero?
        c ||= @shared ||= CLUSTER.client
        s = c.open_stream(agent: KRTest::AGENT_ID, service: "echo")
        s.write("x" * 1000)
        s.read(1000)
        c.request(agent: KRTest::AGENT_ID, service: "web", path: "/bytes?n=2000")
        c.request(agent: KRTest::AGENT_ID, service: "web", path: "/bytes?n=100000") { |_| break }
      end
      GC.start
    end
    round.call(300) # warm-up: buffers, pools, caches reach their size
    before = vm_rss_kib
    round.call(900)
    after = vm_rss_kib
    live = ObjectSpace.each_object(FFI::AutoPointer).count
    $stdout.puts "  VmRSS #{before} KiB -> #{after} KiB after 900 more rounds; #{live} handles alive"
    # 900 rounds made 18 clients and 2,700 streams and responses; the
    # collector released them (a few may still be referenced from the
    # machine stack, which Ruby scans conservatively).
    assert_operator live, :<, 50
    if ENV["SANITIZED"] == "1"
      $stdout.puts "  (VmRSS not bounded: ASan's quarantine keeps freed memory)"
    else
      assert_operator after - before, :<, 20 * 1024, "VmRSS grew from #{before} to #{after} KiB"
    end
    # kas still accepts streams: nothing piled up on its side.
    assert_equal 200, CLUSTER.client.request(agent: KRTest::AGENT_ID, service: "web", path: "/status?code=200").status
  end
end
