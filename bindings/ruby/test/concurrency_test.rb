# frozen_string_literal: true

# One client shared by 16 Ruby threads making 1,000 HTTP requests in total
# at once; every answer belongs to its own request (the upstream echoes the
# path and a per-request header field). Streams and requests mixed on the
# same client from several threads.
require_relative "test_helper"

class ConcurrencyTest < Minitest::Test
  CLUSTER = KRTest.cluster
  CLIENT = CLUSTER.client
  THREADS = 16
  TOTAL = 1000

  def test_16_threads_1000_requests
    errors = Queue.new
    done = Queue.new
    t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    threads = Array.new(THREADS) do |t|
      Thread.new do
        (t...TOTAL).step(THREADS) do |i|
          res = CLIENT.request(agent: KRTest::AGENT_ID, service: "web",
                               path: "/headers?i=#{i}", headers: { "x-request" => i.to_s })
          doc = JSON.parse(res.body)
          h = doc["headers"].to_h { |k, v| [k.downcase, v] }
          if res.status != 200 || doc["path"] != "/headers?i=#{i}" || h["x-request"] != i.to_s
            errors << "request #{i}: #{res.status} #{res.body[0, 200]}"
          end
          done << i
        rescue StandardError => e
          errors << "request #{i}: #{e.class}: #{e.message}"
        end
      end
    end
    threads.each(&:join)
    dt = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
    $stdout.puts format("  %d requests from %d threads in %.2f s (%.0f req/s)", TOTAL, THREADS, dt, TOTAL / dt)
    errs = Array.new(errors.size) { errors.pop }
    assert_empty errs.first(5), "#{errs.size} failed requests"
    assert_equal (0...TOTAL).to_a, Array.new(done.size) { done.pop }.sort
  end

  def test_streams_and_requests_from_many_threads
    threads = Array.new(8) do |t|
      Thread.new do
        20.times.map do |i|
          if (t + i).even?
            CLIENT.open_stream(agent: KRTest::AGENT_ID, service: "echo") do |s|
              msg = "thread #{t} stream #{i} " * 100
              s.write(msg)
              s.close_write
              s.read == msg
            end
          else
            CLIENT.request(agent: KRTest::AGENT_ID, service: "web", path: "/bytes?n=#{1000 + t}").body.bytesize == 1000 + t
          end
        end
      end
    end
    assert(threads.flat_map(&:value).all?)
  end

  # Other Ruby threads keep running while calls wait in the library.
  def test_waiting_calls_do_not_hold_the_vm
    s = CLIENT.open_stream(agent: KRTest::AGENT_ID, service: "echo")
    s.timeout = 1.0
    reader = Thread.new do
      s.readpartial(10)
    rescue KasRoute::Timeout
      :timeout
    end
    ticks = 0
    while reader.alive?
      sleep 0.01
      ticks += 1
    end
    assert_equal :timeout, reader.value
    assert_operator ticks, :>, 20
  ensure
    s&.close
  end
end
