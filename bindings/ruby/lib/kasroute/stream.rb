# frozen_string_literal: true

module KasRoute
  # A raw byte stream to a TCP service behind an agent, made by
  # Client#open_stream. It behaves like a connected socket: #read,
  # #readpartial, #write, #close_write (half-close: the service sees the
  # end of its input), #close; it can be a source or a destination of
  # IO.copy_stream.
  #
  # Threads: one thread may read while another writes (as with a socket);
  # reads are serialised among themselves, and so are writes. #close waits
  # for a read or write in progress on another thread to return (bounded
  # by its timeout).
  #
  # Timeouts: each wait for data or for the window to open is bounded by
  # #timeout (seconds; nil: the client's timeout). A read that timed out
  # raises KasRoute::Timeout and leaves the stream usable; a write that
  # timed out or failed leaves it unusable for writing.
  #
  # A stream not closed is closed (reset) when garbage-collected; a stream
  # inherited by a forked child cannot be used there (KasRoute::ForkError).
  class Stream
    READ_CHUNK = 64 * 1024
    WRITE_CHUNK = 1024 * 1024

    attr_accessor :timeout

    # Internal: made by Client#open_stream.
    def initialize(client, handle, timeout)
      @client = client # the client outlives its streams
      @handle = handle
      @timeout = timeout
      @pid = Process.pid
      @rlock = Mutex.new
      @wlock = Mutex.new
      @rbuf = String.new(encoding: Encoding::BINARY)
      @rmem = nil
      @wmem = nil
      @eof = false
      @closed = false
      @write_closed = false
    end

    # Reads length bytes (fewer only at the end of the stream), or with
    # length nil everything up to the end. At the end: nil for a positive
    # length, "" for nil. outbuf, when given, receives the data.
    def read(length = nil, outbuf = nil)
      @rlock.synchronize do
        check_usable
        if length.nil?
          data = take_buffered(@rbuf.bytesize)
          collect(data) { |c| data << c while (c = fill(READ_CHUNK)) }
          return deliver(data, outbuf)
        end
        length = Integer(length)
        raise ArgumentError, "negative length #{length}" if length.negative?
        return deliver(String.new(encoding: Encoding::BINARY), outbuf) if length.zero?

        data = take_buffered(length)
        collect(data) do
          while data.bytesize < length && (c = fill(length - data.bytesize))
            data << c
          end
        end
        if data.empty?
          outbuf&.clear
          return nil
        end
        deliver(data, outbuf)
      end
    end

    # Reads 1..maxlen bytes, waiting for at least one. Raises EOFError at
    # the end of the stream.
    def readpartial(maxlen, outbuf = nil)
      maxlen = Integer(maxlen)
      raise ArgumentError, "negative length #{maxlen}" if maxlen.negative?

      @rlock.synchronize do
        check_usable
        return deliver(String.new(encoding: Encoding::BINARY), outbuf) if maxlen.zero?

        data = if @rbuf.empty?
                 fill(maxlen)
               else
                 take_buffered(maxlen)
               end
        if data.nil?
          outbuf&.clear
          raise EOFError, "end of stream reached"
        end
        deliver(data, outbuf)
      end
    end

    # Waits for data (or the end) and tells whether the stream ended.
    def eof?
      @rlock.synchronize do
        check_usable
        return false unless @rbuf.empty?
        return true if @eof

        data = fill(READ_CHUNK)
        return true if data.nil?

        @rbuf << data
        false
      end
    end
    alias eof eof?

    # Writes the strings (to_s of other objects); returns the byte count.
    # Blocks while the stream's flow-control window is closed.
    def write(*objects)
      @wlock.synchronize do
        check_usable
        raise IOError, "not opened for writing (close_write was called)" if @write_closed

        objects.sum do |obj|
          str = obj.to_s
          send_bytes(str)
          str.bytesize
        end
      end
    end

    def <<(obj)
      write(obj)
      self
    end

    # Half-closes the stream: the service reads the end of its input after
    # what was written; reading goes on. Idempotent.
    def close_write
      @wlock.synchronize do
        check_usable
        return nil if @write_closed

        Native.check(Native.kr_bstream_close_write(@handle))
        @write_closed = true
      end
      nil
    end

    # Closes the stream (resets it if the service has not finished) and
    # frees it. Idempotent.
    def close
      @wlock.synchronize do
        @rlock.synchronize do
          return nil if @closed

          @closed = true
          # In a forked child the handle is the parent's: leave it (its
          # releaser does nothing in this process either).
          @handle.free if Process.pid == @pid
        end
      end
      nil
    end

    def closed?
      @closed
    end

    # IO compatibility: a stream is always binary and unbuffered on write.
    def binmode
      self
    end

    def binmode?
      true
    end

    def sync
      true
    end

    def sync=(_value); end

    def flush
      self
    end

    def inspect
      "#<#{self.class}#{@closed ? ' (closed)' : ''}>"
    end

    private

    def check_usable
      raise IOError, "closed stream" if @closed
      return if Process.pid == @pid

      raise ForkError.new("this stream was opened in process #{@pid}; a " \
                          "forked child opens its own", name: "STATE")
    end

    # Up to maxlen bytes read from the library, nil at the end.
    def fill(maxlen)
      return nil if @eof

      @rmem ||= ::FFI::MemoryPointer.new(:uint8, READ_CHUNK, false)
      n = Native.read(:kr_bstream_read, @handle, @rmem, [maxlen, READ_CHUNK].min,
                      Native.timeout_us(@timeout))
      raise Native.error(n) if n.negative?

      if n.zero?
        @eof = true
        return nil
      end
      @rmem.read_bytes(n)
    end

    # Up to max bytes from what eof? read ahead.
    def take_buffered(max)
      return String.new(encoding: Encoding::BINARY) if @rbuf.empty?

      data = @rbuf.byteslice(0, max)
      @rbuf = @rbuf.byteslice(max..) || String.new(encoding: Encoding::BINARY)
      data
    end

    # Runs the block that appends to data; if it raises (a timeout), keeps
    # what was read for the next read instead of dropping it.
    def collect(data)
      yield
    rescue StandardError
      @rbuf = data + @rbuf unless data.empty?
      raise
    end

    def deliver(data, outbuf)
      return data if outbuf.nil?

      outbuf.replace(data)
    end

    def send_bytes(str)
      size = str.bytesize
      off = 0
      while off < size
        n = [size - off, WRITE_CHUNK].min
        if @wmem.nil? || @wmem.size < n
          @wmem = ::FFI::MemoryPointer.new(:uint8, [n, 4096].max, false)
        end
        @wmem.put_bytes(0, str, off, n)
        rc = Native.kr_bstream_write(@handle, @wmem, n, Native.timeout_us(@timeout))
        raise Native.error(rc) if rc.negative?

        off += n
      end
    end
  end
end
