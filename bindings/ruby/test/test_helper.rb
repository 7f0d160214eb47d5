# frozen_string_literal: true

# Shared set-up of the gem's tests: the real kasd and agentd (from the meson
# build directory) on loopback ports, a TCP echo upstream and an HTTP
# upstream, and a KasRoute::Client against them.
#
# Environment (set by meson, bindings/ruby/meson.build):
#   KASROUTE_LIB                the built libkasroute.so
#   KASD, AGENTD, KASCTL        the daemons
#   ECHO_SERVER                 tests/system/echo_server
#   HTTP_UPSTREAM, PYTHON       tests/system/http_upstream.py and python3
#   SANITIZED=1                 the programs carry ASan/UBSan (wider time
#                               bounds; their reports fail the test)
#   KEEP_TMP=1                  keep the temporary directory
#
# Anything missing makes the test exit 77 (meson: skipped) with a reason.
# Processes are started with Process.spawn and stopped by their pid;
# waiting means polling an observable condition (a ready line, a log line)
# against a deadline.

require "base64"
require "digest"
require "fileutils"
require "open3"
require "securerandom"
require "socket"
require "tmpdir"
require "ffi"

module KRTest
  SKIP = 77
  AGENT_ID = 7
  MiB = 1 << 20
  SANITIZER_MARKERS = ["ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                       "runtime error:"].freeze

  def self.skip!(why)
    $stdout.puts "SKIP: #{why}", "SKIP: #{'*' * 60}"
    $stdout.flush
    exit SKIP
  end

  def self.slow
    ENV["SANITIZED"] == "1" ? 3.0 : 1.0
  end

  def self.scaled(seconds)
    seconds * slow
  end

  def self.program(var)
    path = ENV[var]
    skip!("#{var} is not set to an executable (got #{path.inspect})") unless path && File.executable?(path)
    File.expand_path(path)
  end

  # Before the gem loads: the library must exist and hold the blocking
  # client (it is skipped, loudly, while the C side is missing).
  def self.check_library
    lib = ENV["KASROUTE_LIB"]
    skip!("KASROUTE_LIB is not set to the built libkasroute.so (got #{lib.inspect})") unless lib && File.file?(lib)
    dl = FFI::DynamicLibrary.open(lib, FFI::DynamicLibrary::RTLD_LAZY | FFI::DynamicLibrary::RTLD_LOCAL)
    return if dl.find_function("kr_bclient_new")

    skip!("#{lib} has no kr_bclient_new(): the blocking client " \
          "(lib/client/blocking.c) is not in this build")
  end

  def self.wait_until(timeout, what, interval: 0.02)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      v = yield
      return v if v
      if Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline
        raise "timed out after #{timeout} s waiting for #{what}"
      end

      sleep interval
    end
  end

  # One child process with stdout and stderr in files of the test dir.
  class Proc
    attr_reader :name, :pid, :status, :kind

    def initialize(dir, name, argv, kind, stdin: :close)
      @name = name
      @kind = kind
      @out = File.join(dir, "#{name}.out")
      @err = File.join(dir, "#{name}.err")
      @argv = argv
      @pid = Process.spawn(*argv, in: stdin, out: @out, err: @err,
                                  pgroup: true, chdir: dir)
      @status = nil
    end

    def stdout = File.exist?(@out) ? File.binread(@out) : ""
    def stderr = File.exist?(@err) ? File.binread(@err) : ""

    def alive?
      return false if @status

      pid, st = Process.waitpid2(@pid, Process::WNOHANG)
      @status = st if pid
      @status.nil?
    end

    def check_alive(what)
      raise "#{@name} exited (#{@status.inspect}) while waiting for #{what}\n#{stderr[-3000..] || stderr}" unless alive?
    end

    def wait_stdout(regex, timeout)
      KRTest.wait_until(timeout, "#{@name} to print #{regex.inspect}") do
        m = regex.match(stdout)
        check_alive(regex.inspect) unless m
        m
      end
    end

    def count_log(regex) = stderr.scan(regex).size

    def wait_log(regex, count, timeout)
      KRTest.wait_until(timeout, "#{count} x #{regex.inspect} in #{@name}'s log") do
        check_alive(regex.inspect)
        count_log(regex) >= count
      end
    end

    # SIGTERM, then SIGKILL after the bound. Returns the exit status.
    def stop(timeout)
      return @status unless alive?

      Process.kill("TERM", @pid)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      while alive?
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline
          Process.kill("KILL", @pid)
          _, @status = Process.waitpid2(@pid)
          return :killed
        end
        sleep 0.02
      end
      @status
    end

    def problems
      text = stderr
      SANITIZER_MARKERS.select { |m| text.include?(m) }.map { |m| "#{@name}: sanitizer report (#{m})" }
    end

    def describe = "#{@name} (pid #{@pid}): #{@argv.join(' ')}"
  end

  # kasd + agentd + echo + HTTP upstream for one test file.
  class Cluster
    attr_reader :dir, :api_url, :secret, :kas, :agent, :echo_port, :http_port,
                :secret_file, :agent_port, :python

    def initialize(route_timeout: 1, connections: 2, http: true, services: {})
      @kasd = KRTest.program("KASD")
      @agentd = KRTest.program("AGENTD")
      @kasctl = KRTest.program("KASCTL")
      @echo = KRTest.program("ECHO_SERVER")
      @python = ENV["PYTHON"] || "/usr/bin/python3"
      @upstream = ENV["HTTP_UPSTREAM"]
      if http && !(File.executable?(@python) && @upstream && File.file?(@upstream))
        KRTest.skip!("the HTTP upstream needs PYTHON (#{@python.inspect}) and " \
                     "HTTP_UPSTREAM (#{@upstream.inspect})")
      end
      @dir = Dir.mktmpdir("kr-ruby-")
      @procs = []
      @seq = 0
      start_guard
      @secret = Base64.strict_encode64(SecureRandom.random_bytes(32))
      @secret_file = write("api.secret", @secret)
      token = "agent-token-#{SecureRandom.hex(16)}"
      @token_file = write("agent.token", token)
      tokens = write("tokens", "#{AGENT_ID} #{hash_token(token)} ruby-test-agent\n")
      @echo_port = start_helper("echo", [@echo])
      @http_port = start_helper("http-upstream", [@python, @upstream]) if http
      @kas = spawn("kasd", [@kasd, "--agent-listen", "tcp://127.0.0.1:0",
                            "--api-listen", "tcp://127.0.0.1:0",
                            "--agent-tokens", tokens,
                            "--api-secret-file", @secret_file,
                            "--route-timeout", route_timeout.to_s], :daemon)
      m = @kas.wait_stdout(/kasd ready agent_port=(\d+) api_port=(\d+)/, KRTest.scaled(10))
      @agent_port = m[1].to_i
      @api_url = "tcp://127.0.0.1:#{m[2]}"
      svc = ["--service", "echo=tcp://127.0.0.1:#{@echo_port}"]
      svc += ["--service", "web=http://127.0.0.1:#{@http_port}"] if http
      # A callable value starts its upstream (through this cluster, so
      # that it is stopped with it) and returns the service URL.
      services.each do |name, url|
        url = url.call(self) if url.respond_to?(:call)
        svc += ["--service", "#{name}=#{url}"]
      end
      @agent = spawn("agentd", [@agentd, "--kas", "tcp://127.0.0.1:#{@agent_port}",
                                "--token-file", @token_file,
                                "--connections", connections.to_s, "--name", "r1"] + svc,
                     :daemon)
      @kas.wait_log(/event=agent_connected kas=\S+ agent=#{AGENT_ID} replica=r1 /, connections,
                    KRTest.scaled(10))
      @agent.wait_log(/event=connected /, connections, KRTest.scaled(10))
    rescue StandardError
      dump_logs
      stop
      raise
    end

    # Another kasd with the same credentials and no agent (for tests that
    # must not disturb the main one, e.g. by authentication failures,
    # which kas throttles per address). Returns its API URL.
    def spare_kas
      k = spawn("kasd-spare", [@kasd, "--agent-listen", "tcp://127.0.0.1:0",
                               "--api-listen", "tcp://127.0.0.1:0",
                               "--agent-tokens", path("tokens"),
                               "--api-secret-file", @secret_file], :daemon)
      m = k.wait_stdout(/kasd ready agent_port=(\d+) api_port=(\d+)/, KRTest.scaled(10))
      "tcp://127.0.0.1:#{m[2]}"
    end

    def client(**opts)
      KasRoute::Client.new(url: @api_url, secret: @secret, timeout: KRTest.scaled(30), **opts)
    end

    # An API JWT minted by kasctl from the secret.
    def token(*extra)
      out, err, st = Open3.capture3(@kasctl, "token", "--secret-file", @secret_file, *extra)
      raise "kasctl token failed: #{err}" unless st.success?

      out.strip
    end

    def path(name) = File.join(@dir, name)

    def write(name, data)
      File.binwrite(path(name), data)
      path(name)
    end

    # Starts a helper that prints "port N" once it listens; returns N.
    def start_helper(base, argv)
      p = spawn(base, argv, :helper)
      p.wait_stdout(/port (\d+)\n/, KRTest.scaled(10))[1].to_i
    end

    def spawn(base, argv, kind)
      @seq += 1
      p = Proc.new(@dir, format("%02d-%s", @seq, base), argv, kind)
      @procs << p
      File.write(@pidfile, "#{p.pid}\n", mode: "a")
      p
    end

    # Expected bytes of the HTTP upstream's /bytes?n=N (its seeded pattern),
    # made by the same Python code that serves them.
    def upstream_bytes(n)
      code = "import sys; sys.path.insert(0, sys.argv[1]); from harness import Pattern; " \
             "from http_upstream import SEED; sys.stdout.buffer.write(Pattern(SEED).make(0, int(sys.argv[2])))"
      out, err, st = Open3.capture3(@python, "-c", code, File.dirname(@upstream), n.to_s, binmode: true)
      raise "pattern: #{err}" unless st.success?

      out
    end

    # Stops clients, agents, kas, helpers by pid. Returns the problems
    # (daemons not exiting 0 on SIGTERM, sanitizer reports).
    def stop
      problems = []
      order = { daemon: 1, helper: 3 }
      @procs.sort_by { |p| [order[p.kind] + (p.name.include?("kasd") ? 1 : 0), p.name] }.each do |p|
        st = p.stop(KRTest.scaled(15))
        if st == :killed
          problems << "#{p.name} ignored SIGTERM; killed"
        elsif p.kind == :daemon && !(st&.exited? && st.exitstatus.zero?)
          problems << "#{p.name} ended with #{st.inspect} on SIGTERM"
        end
      end
      @procs.each { |p| problems.concat(p.problems) }
      stop_guard
      problems
    end

    def dump_logs(lines = 60)
      @procs.each do |p|
        $stdout.puts "----- #{p.describe} (#{p.status.inspect})"
        p.stderr.lines.last(lines).each { |l| $stdout.puts "  #{l}" }
      end
    end

    def cleanup(failed)
      if failed && ENV["KEEP_TMP"] == "1"
        $stdout.puts "temporary directory kept: #{@dir}"
      else
        FileUtils.rm_rf(@dir)
      end
    end

    private

    # The guard: a process that stops this cluster's processes (by the pids
    # listed in a file) if the test process dies without stopping them
    # itself (a crash, a signal, meson's timeout). It waits for the end of
    # a pipe whose only writer is the test process.
    GUARD = <<~'RUBY'
      $stdin.read
      pids = (File.read(ARGV[0]).split.map(&:to_i) rescue [])
      pids.each { |p| Process.kill("TERM", p) rescue nil }
      t = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      pids.each do |p|
        sleep 0.05 while (Process.kill(0, p) rescue nil) && Process.clock_gettime(Process::CLOCK_MONOTONIC) < t
        Process.kill("KILL", p) rescue nil
      end
    RUBY

    def start_guard
      @pidfile = path("pids")
      File.write(@pidfile, "")
      rd, @guard_w = IO.pipe
      @guard_pid = Process.spawn(RbConfig.ruby, "-e", GUARD, @pidfile, in: rd, out: File::NULL,
                                                                      err: File::NULL, pgroup: true)
      rd.close
    end

    # After a normal stop: nothing is left to stop (and no pid that might
    # be reused meanwhile is signalled).
    def stop_guard
      return unless @guard_w

      File.write(@pidfile, "")
      @guard_w.close
      @guard_w = nil
      Process.wait(@guard_pid)
    end

    def hash_token(token)
      out, err, st = Open3.capture3(@kasctl, "hash-token", stdin_data: token)
      raise "kasctl hash-token failed: #{err}" unless st.success?

      h = out.strip
      raise "bad hash #{h.inspect}" unless h.match?(/\A\h{64}\z/)

      h
    end
  end

  # Starts one Cluster for the test file (before minitest runs) and stops
  # it after the last test; daemons that misbehave on the way out, or
  # sanitizer reports, fail the run.
  def self.cluster(**opts)
    @cluster ||= begin
      c = Cluster.new(**opts)
      Minitest.after_run do
        problems = c.stop
        failed = !problems.empty? || !@passed
        c.dump_logs if failed
        c.cleanup(failed)
        unless problems.empty?
          $stdout.puts "FAIL: #{problems.join("\n      ")}"
          exit 1
        end
      end
      c
    end
  end

  def self.passed=(value)
    @passed = value
  end
end

KRTest.check_library
require "kasroute"
require "minitest/autorun"

# Records whether every test passed, so that the daemons' logs are printed
# when one failed.
module KRTest
  class Reporter < Minitest::AbstractReporter
    def initialize
      super
      @ok = true
    end

    def record(result)
      @ok &&= result.passed? || result.skipped?
      KRTest.passed = @ok
    end
  end

  self.passed = true
end

Minitest.extensions << "krtest" unless Minitest.extensions.include?("krtest")
module Minitest
  def self.plugin_krtest_init(_options)
    reporter << KRTest::Reporter.new
  end
end
