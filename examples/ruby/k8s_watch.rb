#!/usr/bin/env ruby
# frozen_string_literal: true

# Streams a Kubernetes watch through an agent and prints each event as it
# arrives (a watch response is one JSON object per line, sent as things
# change, for as long as the API server keeps it open).
#
# The agent serves the API server as an https (or http) service and this
# script sends the Kubernetes credentials itself:
#   agentd ... --service k8s=https://kubernetes.default.svc \
#              --service-ca k8s=/var/run/secrets/kubernetes.io/serviceaccount/ca.crt
#
#   KASROUTE_LIB=build/lib/libkasroute.so \
#   ruby -I bindings/ruby/lib examples/ruby/k8s_watch.rb \
#     --kas tcp://127.0.0.1:8155 --secret-file api.secret --agent 7 \
#     --service k8s --k8s-token-file token --namespace default --resource pods
#
# Prints e.g.
#   ADDED     pods/pod-a  rv=10  phase=Running
#   MODIFIED  pods/pod-a  rv=11  phase=Running
# Stops after --events N events (default: never), at the end of the watch,
# or on Ctrl-C.
require "kasroute"
require "json"
require "optparse"
require "uri"

opts = { service: "k8s", namespace: "default", resource: "pods", timeout: 300.0, events: nil }
OptionParser.new do |o|
  o.banner = "usage: k8s_watch.rb --kas URL (--secret-file F | --token-file F) --agent ID [options]"
  o.on("--kas URL", "kas API listener") { |v| opts[:kas] = v }
  o.on("--secret-file FILE", "API secret (the client mints JWTs)") { |v| opts[:secret_file] = v }
  o.on("--token-file FILE", "API JWT") { |v| opts[:token_file] = v }
  o.on("--ca-file FILE", "CA bundle for tls:// and wss://") { |v| opts[:ca_file] = v }
  o.on("--agent ID", Integer, "agent id") { |v| opts[:agent] = v }
  o.on("--service NAME", "the agent's service for the API server (k8s)") { |v| opts[:service] = v }
  o.on("--k8s-token-file FILE", "bearer token for the API server") { |v| opts[:k8s_token_file] = v }
  o.on("--namespace NS", "namespace (default)") { |v| opts[:namespace] = v }
  o.on("--resource NAME", "core/v1 resource to watch (pods)") { |v| opts[:resource] = v }
  o.on("--events N", Integer, "stop after N events") { |v| opts[:events] = v }
  o.on("--timeout SECONDS", Float, "longest silence on the watch (300)") { |v| opts[:timeout] = v }
end.parse!
abort "k8s_watch.rb: --kas and --agent are required (see --help)" unless opts[:kas] && opts[:agent]
abort "k8s_watch.rb: give one of --secret-file and --token-file" unless opts[:secret_file].nil? ^ opts[:token_file].nil?

credentials = if opts[:secret_file]
                { secret: File.binread(opts[:secret_file]).chomp }
              else
                { token: File.read(opts[:token_file]).strip }
              end
headers = { "accept" => "application/json" }
headers["authorization"] = "Bearer #{File.read(opts[:k8s_token_file]).strip}" if opts[:k8s_token_file]
client = KasRoute::Client.new(url: opts[:kas], tls: opts[:ca_file] ? { ca_file: opts[:ca_file] } : {},
                              timeout: opts[:timeout], **credentials)
path = "/api/v1/namespaces/#{URI.encode_www_form_component(opts[:namespace])}/" \
       "#{URI.encode_www_form_component(opts[:resource])}?watch=1"
seen = 0
pending = +""
$stdout.sync = true
trap("INT") { exit 130 }
begin
  res = client.request(agent: opts[:agent], service: opts[:service], path: path, headers: headers) do |chunk, response|
    unless response.success?
      abort "k8s_watch.rb: HTTP #{response.status}: #{chunk[0, 300]}"
    end
    pending << chunk
    while (nl = pending.index("\n"))
      line = pending.slice!(0, nl + 1).strip
      next if line.empty?

      ev = JSON.parse(line)
      obj = ev["object"] || {}
      meta = obj["metadata"] || {}
      phase = obj.dig("status", "phase")
      puts format("%-9s %s/%s  rv=%s%s", ev["type"], opts[:resource], meta["name"],
                  meta["resourceVersion"], phase ? "  phase=#{phase}" : "")
      seen += 1
      break if opts[:events] && seen >= opts[:events]
    end
    break if opts[:events] && seen >= opts[:events] # leaves the watch
  end
  warn "watch ended by the server (HTTP #{res.status})" if res
rescue KasRoute::Timeout
  warn "k8s_watch.rb: no event for #{opts[:timeout]} s"
  exit 1
rescue KasRoute::Error => e
  abort "k8s_watch.rb: #{e.class.name.split('::').last}: #{e.message}"
ensure
  client.close
end
