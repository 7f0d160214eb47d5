# frozen_string_literal: true

# Raw streams to the TCP echo service (tests/system/echo_server): a 64 MiB
# round trip, byte-exact; IO semantics (read, readpartial, EOF,
# IO.copy_stream both ways); read timeouts leave the stream usable.
require_relative "test_helper"
require "stringio"

class StreamTest < Minitest::Test
  CLUSTER = KRTest.cluster(http: false)
  CLIENT = CLUSTER.client

  def open(&block)
    CLIENT.open_stream(agent: KRTest::AGENT_ID, service: "echo", &block)
  end

  # 64 MiB written by one thread from a 1 MiB random block read at a
  # different offset each time (so misplaced data shows), read back by
  # another, both hashed as they go.
  def test_64_mib_round_trip_is_byte_exact
    total = 64 * KRTest::MiB
    block = SecureRandom.random_bytes(KRTest::MiB)
    twice = block + block
    sent = Digest::SHA256.new
    recv = Digest::SHA256.new
    received = 0
    open do |s|
      writer = Thread.new do
        off = 0
        i = 0
        while off < total
          k = [total - off, 256 * 1024 + (i * 4099 % 8192)].min
          o = (i * 7919) % KRTest::MiB
          piece = twice.byteslice(o, k)
          s.write(piece)
          sent << piece
          off += k
          i += 1
        end
        s.close_write
      end
      buf = String.new
      loop do
        s.readpartial(1 << 20, buf)
        recv << buf
        received += buf.bytesize
      rescue EOFError
        break
      end
      writer.join
    end
    assert_equal total, received
    assert_equal sent.hexdigest, recv.hexdigest
  end

  def test_read_semantics
    open do |s|
      s.write("hello ", "world")
      s << "!" << 42
      s.close_write
      assert_raises(IOError) { s.write("late") }
      assert_equal "hel", s.read(3)
      assert_equal "", s.read(0)
      assert_equal "lo", s.readpartial(2)
      refute s.eof?
      buf = +"junk"
      assert_same buf, s.read(nil, buf)
      assert_equal " world!42", buf
      assert s.eof?
      assert_nil s.read(1)
      assert_equal "", s.read
      assert_raises(EOFError) { s.readpartial(10) }
    end
  end

  def test_copy_stream_both_ways
    data = SecureRandom.random_bytes(3 * KRTest::MiB + 5)
    out = StringIO.new(String.new(encoding: Encoding::BINARY))
    open do |s|
      writer = Thread.new do
        IO.copy_stream(StringIO.new(data), s)
        s.close_write
      end
      assert_equal data.bytesize, IO.copy_stream(s, out)
      writer.join
    end
    assert_equal data, out.string
  end

  def test_copy_stream_from_a_file
    Dir.mktmpdir do |d|
      src = File.join(d, "src")
      dst = File.join(d, "dst")
      File.binwrite(src, SecureRandom.random_bytes(KRTest::MiB))
      open do |s|
        t = Thread.new do
          File.open(src, "rb") { |f| IO.copy_stream(f, s) }
          s.close_write
        end
        File.open(dst, "wb") { |f| IO.copy_stream(s, f) }
        t.join
      end
      assert_equal File.binread(src), File.binread(dst)
    end
  end

  def test_read_timeout_leaves_the_stream_usable
    open do |s|
      s.timeout = 0.3
      t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      e = assert_raises(KasRoute::Timeout) { s.readpartial(10) }
      assert_operator Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0, :>=, 0.25
      assert_equal "TIMEDOUT", e.name
      s.timeout = nil
      s.write("ping")
      assert_equal "ping", s.read(4)
    end
  end

  def test_partial_read_kept_across_a_timeout
    open do |s|
      s.timeout = 0.3
      s.write("abc")
      assert_raises(KasRoute::Timeout) { s.read(10) }
      s.write("defghij")
      assert_equal "abcdefghij", s.read(10)
    end
  end

  def test_block_form_closes
    kept = open do |s|
      s.write("x")
      assert_equal "x", s.read(1)
      s
    end
    assert kept.closed?
    assert_raises(IOError) { kept.read(1) }
    kept.close # idempotent
  end

  def test_many_streams_at_once
    streams = Array.new(32) { open }
    streams.each_with_index { |s, i| s.write("stream #{i}\n") }
    streams.each_with_index { |s, i| assert_equal "stream #{i}\n", s.read("stream #{i}\n".bytesize) }
  ensure
    streams&.each(&:close)
  end
end
