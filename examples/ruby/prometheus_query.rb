#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs a PromQL instant query against a Prometheus that an agent serves
# (agentd --service prometheus=http://prometheus.monitoring:9090) and
# prints one line per series.
#
#   KASROUTE_LIB=build/lib/libkasroute.so \
#   ruby -I bindings/ruby/lib examples/ruby/prometheus_query.rb \
#     --kas tcp://127.0.0.1:8155 --secret-file api.secret --agent 7 \
#     --query 'up'
#
# Prints e.g.
#   up{instance="localhost:9090",job="prometheus"} 1 @1732710000.123
require "kasroute"
require "json"
require "optparse"
require "uri"

opts = { service: "prometheus", query: "up", timeout: 30.0 }
OptionParser.new do |o|
  o.banner = "usage: prometheus_query.rb --kas URL (--secret-file F | --token-file F) --agent ID [options]"
  o.on("--kas URL", "kas API listener (tcp://, tls://, ws://, wss://)") { |v| opts[:kas] = v }
  o.on("--secret-file FILE", "API secret (the client mints JWTs)") { |v| opts[:secret_file] = v }
  o.on("--token-file FILE", "API JWT") { |v| opts[:token_file] = v }
  o.on("--ca-file FILE", "CA bundle for tls:// and wss://") { |v| opts[:ca_file] = v }
  o.on("--agent ID", Integer, "agent id") { |v| opts[:agent] = v }
  o.on("--service NAME", "the agent's Prometheus service (prometheus)") { |v| opts[:service] = v }
  o.on("--query PROMQL", "instant query (up)") { |v| opts[:query] = v }
  o.on("--timeout SECONDS", Float, "bound of each wait (30)") { |v| opts[:timeout] = v }
end.parse!
abort "prometheus_query.rb: --kas and --agent are required (see --help)" unless opts[:kas] && opts[:agent]
unless opts[:secret_file].nil? ^ opts[:token_file].nil?
  abort "prometheus_query.rb: give one of --secret-file and --token-file"
end

credentials = if opts[:secret_file]
                { secret: File.binread(opts[:secret_file]).chomp }
              else
                { token: File.read(opts[:token_file]).strip }
              end
tls = opts[:ca_file] ? { ca_file: opts[:ca_file] } : {}
client = KasRoute::Client.new(url: opts[:kas], tls: tls, timeout: opts[:timeout], **credentials)
begin
  res = client.request(agent: opts[:agent], service: opts[:service],
                       path: "/api/v1/query?#{URI.encode_www_form(query: opts[:query])}",
                       headers: { "accept" => "application/json" })
  doc = begin
    JSON.parse(res.body)
  rescue JSON::ParserError
    abort "prometheus_query.rb: HTTP #{res.status}, not JSON: #{res.body[0, 200].inspect}"
  end
  abort "prometheus_query.rb: HTTP #{res.status}: #{doc['error'] || res.body[0, 200]}" unless res.success? && doc["status"] == "success"

  data = doc["data"]
  case data["resultType"]
  when "vector"
    data["result"].each do |r|
      m = r["metric"].dup
      name = m.delete("__name__") || ""
      labels = m.sort.map { |k, v| "#{k}=#{v.dump}" }.join(",")
      ts, value = r["value"]
      puts "#{name}{#{labels}} #{value} @#{ts}"
    end
    warn "(no series)" if data["result"].empty?
  when "scalar", "string"
    ts, value = data["result"]
    puts "#{value} @#{ts}"
  else
    puts JSON.pretty_generate(data)
  end
rescue KasRoute::AgentNotConnected, KasRoute::UnknownService, KasRoute::Unauthorized => e
  abort "prometheus_query.rb: #{e.class.name.split('::').last}: #{e.message}"
ensure
  client.close
end
