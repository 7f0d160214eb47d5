# frozen_string_literal: true

# KasRoute: reach services in private networks through the agents of a kas
# tier, over libkasroute's blocking client (loaded with the ffi gem).
#
#   require "kasroute"
#   client = KasRoute::Client.new(url: "tls://kas.example:8155",
#                                 secret: File.binread("/etc/kas/api.secret"),
#                                 tls: {ca_file: "/etc/kas/ca.pem"})
#   client.request(agent: 7, service: "prometheus",
#                  path: "/api/v1/query?query=up").body
#   client.open_stream(agent: 7, service: "redis") { |s| s.write("PING\r\n"); s.readpartial(64) }
#   client.agents.map(&:id)
#
# The library is found by its SONAME (libkasroute.so.0) or at the path in
# KASROUTE_LIB.
require_relative "kasroute/version"
require_relative "kasroute/errors"
require_relative "kasroute/ffi"
require_relative "kasroute/response"
require_relative "kasroute/stream"
require_relative "kasroute/client"

module KasRoute
  # The loaded library's version ("MAJOR.MINOR.PATCH").
  def self.library_version
    Native::LIBRARY_VERSION
  end
end
