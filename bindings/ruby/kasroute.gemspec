# frozen_string_literal: true

require_relative "lib/kasroute/version"

Gem::Specification.new do |s|
  s.name = "kasroute"
  s.version = KasRoute::VERSION
  s.summary = "Reach services behind kas agents from Ruby (libkasroute over FFI)"
  s.description = <<~DESC
    Ruby binding of libkasroute's blocking client: HTTP requests and raw
    byte streams to the services of agents connected to a kas tier, and the
    list of connected agents. Thread-safe; loads libkasroute.so.0 through
    the ffi gem.
  DESC
  s.authors = ["libkasroute contributors"]
  s.license = "MIT"
  s.files = Dir.chdir(__dir__) { Dir["lib/**/*.rb"] + ["kasroute.gemspec"] }
  s.require_paths = ["lib"]
  s.required_ruby_version = ">= 3.0"
  s.add_dependency "ffi", "~> 1.15"
  s.requirements << "libkasroute #{KasRoute::LIBRARY_MAJOR}.x " \
                    "(libkasroute.so.#{KasRoute::LIBRARY_MAJOR}, >= #{KasRoute::LIBRARY_MINIMUM})"
end
