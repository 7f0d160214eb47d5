# frozen_string_literal: true

require "json"

module KasRoute
  # A connected agent, from Client#agents.
  #   id                  the agent id
  #   connections         its tunnel connections over the whole kas tier
  #   connected_since_ms  Unix time (ms) of its oldest connection
  #   instances           [Instance]: per kas instance
  #   replicas            [Replica]: per agentd replica (its --name)
  Agent = Struct.new(:id, :connections, :connected_since_ms, :instances,
                     :replicas, keyword_init: true) do
    def connected_since
      connected_since_ms && Time.at(connected_since_ms / 1000.0)
    end
  end
  Instance = Struct.new(:instance, :connections, :connected_since_ms,
                        keyword_init: true)
  Replica = Struct.new(:name, :instance, :connections, :connected_since_ms,
                       keyword_init: true)

  # A client of the kas tier: one multiplexed connection to a kas API
  # listener, kept by libkasroute's own I/O thread. Every method may be
  # called from any number of Ruby threads at once; each blocks only its
  # calling thread (the GVL is released while it waits).
  #
  #   client = KasRoute::Client.new(url: "tcp://kas.internal:8155",
  #                                 secret: File.binread("api.secret"))
  #   res = client.request(agent: 7, service: "prometheus",
  #                        path: "/api/v1/query?query=up")
  #   res.status  # => 200
  #
  # The connection is made at once and re-made on demand after it failed.
  # Timeouts are in seconds; every call takes timeout: to override the
  # client's. A client is closed by #close, or when garbage-collected.
  # After fork, the child makes its own client: the parent's raises
  # KasRoute::ForkError there.
  class Client
    DEFAULT_TIMEOUT = 30.0

    # url:     the kas API listener: tcp://, tls://, ws:// or wss://
    # secret:  the API secret (>= 32 bytes): the library mints short-lived
    #          JWTs from it, or
    # token:   a JWT to present as is
    # tls:     {ca_file: PATH (default: the system store), verify: true}
    # timeout: default bound of every call, seconds
    def initialize(url:, secret: nil, token: nil, tls: {}, timeout: DEFAULT_TIMEOUT)
      if secret.nil? == token.nil?
        raise ArgumentError, "give exactly one of secret: and token:"
      end

      tls ||= {}
      unknown = tls.keys - %i[ca_file verify]
      raise ArgumentError, "unknown tls: keys #{unknown.inspect}" unless unknown.empty?

      @pid = Process.pid
      @lock = Mutex.new
      @idle = ConditionVariable.new
      @busy = 0
      @closed = false
      @handle = connect(url, secret, token, tls, Native.timeout_us(timeout))
    end

    # Makes an HTTP request to an agent's http, https or kubernetes
    # service. headers: a Hash (an Array value repeats the field) or an
    # Array of [name, value] pairs; body: a String (or an object with
    # #read or #to_str), nil for none.
    #
    # Without a block, returns a Response with the whole body. With a
    # block, yields each piece of the body as it arrives (chunk, response)
    # and returns the Response with body nil; breaking out of the block
    # abandons the rest of the body. timeout: bounds the wait for the
    # response head and each wait for body bytes.
    def request(agent:, service:, path:, method: "GET", headers: {}, body: nil,
                timeout: nil, &block)
      t = Native.timeout_us(timeout)
      agent = Integer(agent)
      service = service.to_s
      method = method.to_s
      path = path.to_s
      md, nmd, _md_data = Native.metadata(headers)
      data = body_bytes(body)
      mem = data && !data.empty? ? Native.bytes(data) : nil
      scratch = Native.scratch
      out = scratch.out
      out.put_pointer(0, nil)
      handle = nil
      begin
        rc, msg = call do |h|
          Native.kr_bclient_http_request(h, agent, service, method, path, md, nmd,
                                         mem, mem ? data.bytesize : 0, t, out)
        end
        raise Native.error(rc, msg) if rc.negative?

        handle = out.read_pointer
        response = Response.new(Native.kr_bhttp_response_status(handle),
                                response_fields(handle, scratch.cells))
        if block
          read_body(handle, t, scratch.buffer) { |chunk| block.call(chunk, response) }
        else
          all = nil
          read_body(handle, t, scratch.buffer) { |chunk| all ? all << chunk : all = chunk }
          response.body = all || String.new(encoding: Encoding::BINARY)
        end
        response
      ensure
        # The cell was NULL before the call and holds the response only if
        # it succeeded: this also frees one that an exception (Thread#raise)
        # separated from the assignment above. Requests made from the block
        # use the same cell, but only after handle was set.
        handle ||= out.read_pointer
        Native.kr_bhttp_response_free(handle) unless handle.null?
      end
    end

    # Opens a raw stream to (agent, service) and waits for the agent to
    # accept it; metadata: extra stream metadata (Hash). Returns a Stream;
    # with a block, yields it, closes it afterwards and returns the
    # block's value.
    def open_stream(agent:, service:, metadata: {}, timeout: nil)
      t = Native.timeout_us(timeout)
      service = service.to_s
      md, nmd, _md_data = Native.metadata(metadata)
      out = ::FFI::MemoryPointer.new(:pointer)
      rc, msg = call do |h|
        Native.kr_bclient_open(h, Integer(agent), service, md, nmd, t, out)
      end
      raise Native.error(rc, msg) if rc.negative?

      stream = Stream.new(self, Native.handle(out, :kr_bstream_free), timeout)
      return stream unless block_given?

      begin
        yield stream
      ensure
        stream.close
      end
    end

    # The agents connected to the kas tier (every instance when kas uses
    # Redis), as an Array of Agent.
    def agents(timeout: nil)
      parse_agents(agents_json(timeout: timeout))
    end

    # The agent listing as the library returns it: the JSON text of
    # GET /api/v1/agents ({"agents": [...], "truncated": false}).
    def agents_json(timeout: nil)
      t = Native.timeout_us(timeout)
      json = ::FFI::MemoryPointer.new(:pointer)
      len = ::FFI::MemoryPointer.new(:size_t)
      rc, msg = call { |h| Native.kr_bclient_list_agents(h, t, json, len) }
      raise Native.error(rc, msg) if rc.negative?

      ptr = json.read_pointer
      begin
        ptr.read_bytes(len.read(:size_t)).force_encoding(Encoding::UTF_8)
      ensure
        Native.kr_bclient_free_string(ptr)
      end
    end

    # Closes the connection and stops the library's thread, after the
    # calls in progress on other threads returned. Streams still open are
    # reset (their later calls raise KasRoute::Closed). Idempotent.
    def close
      @lock.synchronize do
        return nil if @closed

        @closed = true
        @idle.wait(@lock) while @busy.positive?
      end
      @handle.free if Process.pid == @pid
      nil
    end

    def closed?
      @closed
    end

    def inspect
      "#<#{self.class}#{@closed ? ' (closed)' : ''}>"
    end

    private

    def connect(url, secret, token, tls, timeout_us)
      cell = ::FFI::MemoryPointer.new(:pointer)
      Native.check(Native.kr_bclient_options_new(cell))
      opts = cell.read_pointer
      begin
        Native.check(Native.kr_bclient_options_set_url(opts, url.to_s))
        if secret
          key = Native.bytes(secret)
          begin
            Native.check(Native.kr_bclient_options_set_secret(opts, key, secret.bytesize))
          ensure
            key.clear # the library keeps its own copy
          end
        else
          jwt = Native.bytes(token)
          Native.check(Native.kr_bclient_options_set_token(opts, jwt, token.bytesize))
        end
        if tls[:ca_file]
          Native.check(Native.kr_bclient_options_set_tls_ca_file(opts, tls[:ca_file].to_s))
        end
        if tls.key?(:verify)
          Native.check(Native.kr_bclient_options_set_tls_verify(opts, tls[:verify] ? 1 : 0))
        end
        Native.check(Native.kr_bclient_options_set_timeout(opts, timeout_us)) if timeout_us.positive?
        err = ::FFI::MemoryPointer.new(:char, 512)
        rc = Native.kr_bclient_new(cell, opts, err, err.size)
        raise Native.error(rc, err.read_string) if rc.negative?

        Native.handle(cell, :kr_bclient_free)
      ensure
        Native.kr_bclient_options_free(opts)
      end
    end

    # Runs the block with the native handle while counting it as a call in
    # progress (so #close waits for it). Returns [the block's value, the
    # library's message for this thread when that value is negative]: the
    # message is read at once, before anything else on this thread can
    # make another library call.
    def call
      @lock.synchronize do
        raise Closed.new("client is closed", name: "CLOSED") if @closed

        @busy += 1
      end
      begin
        if Process.pid != @pid
          raise ForkError.new("this client was made in process #{@pid}; a " \
                              "forked child makes its own", name: "STATE")
        end
        rc = yield @handle
        [rc, rc.negative? ? Native.kr_bclient_last_error : nil]
      ensure
        @lock.synchronize do
          @busy -= 1
          @idle.broadcast if @busy.zero?
        end
      end
    end

    def body_bytes(body)
      return nil if body.nil?
      return body.read.to_s if body.respond_to?(:read)

      body.to_str
    end

    def response_fields(handle, cells)
      count = Native.kr_bhttp_response_header_count(handle)
      name = cells
      name_len = cells + ::FFI::Pointer.size
      value = cells + 2 * ::FFI::Pointer.size
      value_len = cells + 3 * ::FFI::Pointer.size
      Array.new(count) do |i|
        Native.check(Native.kr_bhttp_response_header(handle, i, name, name_len,
                                                     value, value_len))
        [name.read_pointer.read_bytes(name_len.read(:size_t)),
         value.read_pointer.read_bytes(value_len.read(:size_t))]
      end
    end

    # Yields the body in pieces; buf is a scratch buffer of the calling
    # fiber, copied out before each yield (so the block may make requests).
    def read_body(handle, timeout_us, buf)
      loop do
        n = Native.read(:kr_bhttp_response_read, handle, buf, buf.size, timeout_us)
        raise Native.error(n) if n.negative?
        break if n.zero?

        yield buf.read_bytes(n)
      end
    end

    def parse_agents(json)
      doc = JSON.parse(json)
      (doc["agents"] || []).map do |a|
        Agent.new(
          id: a["id"], connections: a["connections"],
          connected_since_ms: a["connected_since_ms"],
          instances: (a["instances"] || []).map do |i|
            Instance.new(instance: i["instance"], connections: i["connections"],
                         connected_since_ms: i["connected_since_ms"])
          end,
          replicas: (a["replicas"] || []).map do |r|
            Replica.new(name: r["name"], instance: r["instance"],
                        connections: r["connections"],
                        connected_since_ms: r["connected_since_ms"])
          end
        )
      end
    rescue JSON::ParserError => e
      raise ProtocolError.new("agent listing is not JSON: #{e.message}", name: "PROTO")
    end
  end
end
