#!/usr/bin/env ruby
# frozen_string_literal: true

# N small HTTP requests through kas with the Ruby binding, from T threads
# sharing one KasRoute::Client: the Ruby side of bench/ruby/run.sh (the C
# side is bclient_load.c, same arguments, same output line).
#
#   ruby -I bindings/ruby/lib bench/ruby/bench_requests.rb --kas URL \
#     --secret-file FILE --agent ID --service NAME [--path /hello] \
#     [--requests 10000] [--threads 1] [--expect-bytes N]
#
# Prints: ruby threads=T requests=N seconds=S rps=R
require "kasroute"
require "optparse"

opts = { path: "/hello", requests: 10_000, threads: 1, expect_bytes: nil }
OptionParser.new do |o|
  o.on("--kas URL") { |v| opts[:kas] = v }
  o.on("--secret-file FILE") { |v| opts[:secret_file] = v }
  o.on("--agent ID", Integer) { |v| opts[:agent] = v }
  o.on("--service NAME") { |v| opts[:service] = v }
  o.on("--path PATH") { |v| opts[:path] = v }
  o.on("--requests N", Integer) { |v| opts[:requests] = v }
  o.on("--threads T", Integer) { |v| opts[:threads] = v }
  o.on("--expect-bytes N", Integer) { |v| opts[:expect_bytes] = v }
end.parse!
%i[kas secret_file agent service].each { |k| abort "bench_requests.rb: --#{k.to_s.tr('_', '-')} is required" unless opts[k] }

client = KasRoute::Client.new(url: opts[:kas], secret: File.binread(opts[:secret_file]).chomp)
check = lambda do
  res = client.request(agent: opts[:agent], service: opts[:service], path: opts[:path])
  if res.status != 200 || (opts[:expect_bytes] && res.body.bytesize != opts[:expect_bytes])
    raise "status #{res.status}, #{res.body.bytesize} body bytes"
  end
end
check.call # the connection is up before the clock starts

counter = 0
lock = Mutex.new
t0 = Process.clock_gettime(Process::CLOCK_MONOTONIC)
threads = Array.new(opts[:threads]) do
  Thread.new do
    loop do
      mine = lock.synchronize { counter += 1 }
      break if mine > opts[:requests]

      check.call
    end
  end
end
threads.each(&:join)
dt = Process.clock_gettime(Process::CLOCK_MONOTONIC) - t0
client.close
puts format("ruby threads=%d requests=%d seconds=%.3f rps=%.0f", opts[:threads], opts[:requests], dt,
            opts[:requests] / dt)
