# frozen_string_literal: true

require "ffi"

module KasRoute
  # The C functions of libkasroute's blocking client
  # (include/kasroute/blocking.h) and the helpers that turn their return
  # codes into exceptions. Internal: the public API is KasRoute::Client.
  #
  # The library is loaded by its SONAME, or from the path in the
  # KASROUTE_LIB environment variable (development and tests: the meson
  # build directory's lib/libkasroute.so). Its version is checked at load
  # against LIBRARY_MAJOR and LIBRARY_MINIMUM.
  #
  # Every call that can wait is attached with blocking: true: Ruby releases
  # the GVL for its duration, so other Ruby threads run meanwhile (and a
  # call that waits for the library's own thread cannot deadlock the VM).
  # The library never calls back into Ruby.
  module Native
    extend ::FFI::Library

    SONAME = "libkasroute.so.#{LIBRARY_MAJOR}"

    def self.library_path
      path = ENV["KASROUTE_LIB"]
      path.nil? || path.empty? ? SONAME : path
    end

    begin
      ffi_lib library_path
    rescue ::LoadError => e
      raise LibraryError, "kasroute: cannot load #{library_path} (set " \
                          "KASROUTE_LIB to the library's path, or install " \
                          "libkasroute #{LIBRARY_MAJOR}.x): #{e.message}"
    end

    # kr_md: one metadata or header field (name and value bytes).
    class Md < ::FFI::Struct
      layout :name, :pointer, :name_len, :size_t,
             :value, :pointer, :value_len, :size_t
    end

    typedef :uint64, :kr_time_us

    # Attaches a function, turning a missing symbol into a LibraryError
    # that names the library (an older or foreign libkasroute).
    def self.attach(name, args, ret, c_name: name, **opts)
      attach_function(name, c_name, args, ret, **opts)
    rescue ::FFI::NotFoundError
      raise LibraryError, "kasroute: #{library_path} has no #{c_name}() " \
                          "(libkasroute >= #{LIBRARY_MINIMUM} is needed)"
    end

    attach :kr_version, [], :string
    attach :kr_version_number, [], :uint
    attach :kr_strerror, [:int], :string
    attach :kr_err_name, [:int], :string

    # Raises LibraryError unless version ("MAJOR.MINOR.PATCH") has the
    # gem's major version and is at least LIBRARY_MINIMUM.
    def self.check_version(version)
      parts = version.to_s.split(".")
      unless parts.size == 3 && parts.all? { |p| p.match?(/\A\d+\z/) }
        raise LibraryError, "kasroute: #{library_path} reports version " \
                            "#{version.inspect}, not MAJOR.MINOR.PATCH"
      end
      have = parts.map(&:to_i)
      if have[0] != LIBRARY_MAJOR ||
         (have <=> LIBRARY_MINIMUM.split(".").map(&:to_i)) < 0
        raise LibraryError, "kasroute #{VERSION} needs libkasroute " \
                            ">= #{LIBRARY_MINIMUM}, < #{LIBRARY_MAJOR + 1}.0; " \
                            "#{library_path} is #{version}"
      end
      version
    end

    # Checked before anything else is attached: an incompatible library
    # is named as such rather than by the first function it lacks.
    LIBRARY_VERSION = check_version(kr_version).dup.freeze

    # Options: plain setters that copy their arguments; nothing waits.
    attach :kr_bclient_options_new, [:pointer], :int
    attach :kr_bclient_options_free, [:pointer], :void
    attach :kr_bclient_options_set_url, %i[pointer string], :int
    attach :kr_bclient_options_set_token, %i[pointer pointer size_t], :int
    attach :kr_bclient_options_set_secret, %i[pointer pointer size_t], :int
    attach :kr_bclient_options_set_tls_ca_file, %i[pointer string], :int
    attach :kr_bclient_options_set_tls_verify, %i[pointer int], :int
    attach :kr_bclient_options_set_timeout, %i[pointer kr_time_us], :int

    # Starting and stopping the library's thread waits for it.
    attach :kr_bclient_new, %i[pointer pointer pointer size_t], :int,
           blocking: true
    attach :kr_bclient_free, [:pointer], :void, blocking: true
    attach :kr_bclient_last_error, [], :string

    # Strings (service, method, path) are read and copied by the library
    # before these calls wait; an embedded NUL raises ArgumentError.
    attach :kr_bclient_open,
           %i[pointer int64 string pointer size_t kr_time_us pointer], :int,
           blocking: true
    attach :kr_bstream_write, %i[pointer pointer size_t kr_time_us], :int64,
           blocking: true
    attach :kr_bstream_read, %i[pointer pointer size_t kr_time_us], :int64,
           blocking: true
    # These two only take the client's lock for a moment (the library's
    # thread never holds it while it works): the GVL stays, which spares
    # every request a release and re-acquisition.
    attach :kr_bstream_close_write, [:pointer], :int
    attach :kr_bstream_free, [:pointer], :void

    attach :kr_bclient_http_request,
           %i[pointer int64 string string string pointer size_t pointer
              size_t kr_time_us pointer], :int, blocking: true
    attach :kr_bhttp_response_status, [:pointer], :int
    attach :kr_bhttp_response_header_count, [:pointer], :size_t
    attach :kr_bhttp_response_header,
           %i[pointer size_t pointer pointer pointer pointer], :int
    attach :kr_bhttp_response_read,
           %i[pointer pointer size_t kr_time_us], :int64, blocking: true
    attach :kr_bhttp_response_free, [:pointer], :void

    # The read functions again, without releasing the GVL, for a read that
    # must not wait: called with a timeout of NO_WAIT_US they return what
    # is buffered, 0 at the end, or KR_ETIMEDOUT at once. Data usually
    # arrives with (or before) the call that waits for it, so most reads
    # cost no GVL hand-over; a timed-out one is followed by the waiting
    # (blocking: true) read.
    NO_WAIT_US = 1
    attach :kr_bstream_read_now, %i[pointer pointer size_t kr_time_us], :int64,
           c_name: :kr_bstream_read
    attach :kr_bhttp_response_read_now, %i[pointer pointer size_t kr_time_us],
           :int64, c_name: :kr_bhttp_response_read

    attach :kr_bclient_list_agents, %i[pointer kr_time_us pointer pointer],
           :int, blocking: true
    attach :kr_bclient_free_string, [:pointer], :void

    TIMEDOUT = -12
    unless kr_err_name(TIMEDOUT) == "TIMEDOUT"
      raise LibraryError, "kasroute: #{library_path}: unexpected error numbering"
    end

    # kr_bstream_read / kr_bhttp_response_read (fn: :kr_bstream_read or
    # :kr_bhttp_response_read): what is buffered at once, else a wait of
    # up to timeout_us with the GVL released. Returns the library's result.
    def self.read(fn, handle, buf, cap, timeout_us)
      n = public_send(:"#{fn}_now", handle, buf, cap, NO_WAIT_US)
      return n unless n == TIMEDOUT

      public_send(fn, handle, buf, cap, timeout_us)
    end


    # The exception for a negative library code: the class named by
    # kr_err_name(code), the message given (from an err buffer) or the
    # calling thread's kr_bclient_last_error(), else kr_strerror(code).
    # Call it right after the failed call, on the same thread.
    def self.error(code, message = nil)
      message = kr_bclient_last_error if message.nil? || message.empty?
      message = kr_strerror(code) if message.nil? || message.empty?
      name = kr_err_name(code)
      ERROR_CLASSES.fetch(name, Error).new(message.dup, code: code, name: name)
    end

    # rc when it is not negative, else raises its error.
    def self.check(rc, message = nil)
      raise error(rc, message) if rc.negative?

      rc
    end

    # Microseconds for a timeout in seconds; nil gives 0 (the library's
    # default: the client's timeout).
    def self.timeout_us(seconds)
      return 0 if seconds.nil?
      unless seconds.is_a?(Numeric) && seconds.positive?
        raise ArgumentError, "timeout must be a positive number of seconds, " \
                             "got #{seconds.inspect}"
      end

      [(seconds * 1_000_000).round, 1].max
    end

    # A native copy of a String's bytes (nil for nil). The copy lives as
    # long as the returned pointer is referenced: keep it in a local
    # variable across the call that uses it.
    def self.bytes(str)
      return nil if str.nil?

      str = str.to_str
      mem = ::FFI::MemoryPointer.new(:uint8, str.bytesize + 1, false)
      mem.put_bytes(0, str)
      mem.put_uint8(str.bytesize, 0)
      mem
    end

    # Per-fiber scratch memory for the calls of one request: the out cell
    # of a constructor, the cells of a header lookup, a body read buffer.
    # A fiber makes one library call at a time, and every result is copied
    # out of the scratch before control returns to the caller.
    class Scratch
      BUFFER = 64 * 1024

      attr_reader :out, :cells, :buffer

      def initialize
        @out = ::FFI::MemoryPointer.new(:pointer)
        @cells = ::FFI::MemoryPointer.new(:pointer, 4)
        @buffer = ::FFI::MemoryPointer.new(:uint8, BUFFER, false)
      end
    end

    def self.scratch
      Thread.current[:__kasroute_scratch] ||= Scratch.new
    end

    NO_METADATA = [nil, 0, nil].freeze

    # A native kr_md array for a Hash or an Array of [name, value] pairs
    # (an Array value repeats the field). Returns [array pointer or nil,
    # count, the pointers that must stay referenced during the call].
    def self.metadata(fields)
      return NO_METADATA if fields.nil? || fields.empty?

      pairs = []
      (fields || {}).each do |name, value|
        if value.is_a?(Array)
          value.each { |v| pairs << [name.to_s, v.to_s] }
        else
          pairs << [name.to_s, value.to_s]
        end
      end
      return [nil, 0, nil] if pairs.empty?

      blob = String.new(capacity: 64 * pairs.size, encoding: Encoding::BINARY)
      pairs.each { |n, v| blob << n.b << v.b }
      data = bytes(blob)
      arr = ::FFI::MemoryPointer.new(Md, pairs.size, false)
      off = 0
      pairs.each_with_index do |(n, v), i|
        md = Md.new(arr + i * Md.size)
        md[:name] = data + off
        md[:name_len] = n.bytesize
        off += n.bytesize
        md[:value] = data + off
        md[:value_len] = v.bytesize
        off += v.bytesize
      end
      [arr, pairs.size, data]
    end

    # The release function of a handle's FFI::AutoPointer: frees the
    # handle with the named kr_*_free function, but only in the process
    # that made it. A forked child inherits the parent's objects; freeing
    # them there would act on state (the library's thread, sockets shared
    # with the parent) that belongs to the parent.
    class Releaser
      def initialize(free_function)
        @free_function = free_function
        @pid = Process.pid
      end

      def call(ptr)
        Native.public_send(@free_function, ptr) if Process.pid == @pid
      end
    end

    # An FFI::AutoPointer for a handle the library returned in out (a
    # pointer-sized cell), released with free_function.
    def self.handle(out, free_function)
      ::FFI::AutoPointer.new(out.read_pointer, Releaser.new(free_function))
    end
  end
end
