# frozen_string_literal: true

# `gem build` makes the gem, and the gem installs into an empty GEM_HOME
# and works from a plain `ruby` (ffi from Debian's ruby-ffi): load, version
# check, one request through the daemons.
require_relative "test_helper"

class GemTest < Minitest::Test
  GEM_DIR = File.expand_path("..", __dir__)
  CLUSTER = KRTest.cluster

  def run_cmd(env, *argv, chdir:)
    out, st = Open3.capture2e(env, *argv, chdir: chdir)
    assert st.success?, "#{argv.join(' ')} failed (#{st.inspect}):\n#{out}"
    out
  end

  def test_gem_builds_installs_and_works
    gem = File.join(RbConfig::CONFIG["bindir"], "gem")
    KRTest.skip!("no gem program next to ruby (#{gem})") unless File.executable?(gem)
    Dir.mktmpdir("kr-gem-") do |tmp|
      # Build from a copy: the source tree stays clean.
      src = File.join(tmp, "src")
      FileUtils.mkdir_p(src)
      FileUtils.cp_r(File.join(GEM_DIR, "lib"), src)
      FileUtils.cp(File.join(GEM_DIR, "kasroute.gemspec"), src)
      out = run_cmd({}, gem, "build", "kasroute.gemspec", chdir: src)
      file = File.join(src, "kasroute-#{KasRoute::VERSION}.gem")
      assert File.file?(file), out
      home = File.join(tmp, "home")
      # An empty GEM_HOME in front of the system's gem paths: ffi is
      # satisfied by Debian's ruby-ffi (--local: no network).
      env = { "GEM_HOME" => home, "GEM_PATH" => [home, *Gem.default_path].join(File::PATH_SEPARATOR),
              "RUBYLIB" => nil, "RUBYOPT" => nil, "KASROUTE_LIB" => ENV["KASROUTE_LIB"] }
      run_cmd(env, gem, "install", "--local", "--no-document", file, chdir: tmp)
      code = <<~RUBY
        require "kasroute"
        abort "loaded from \#{$LOADED_FEATURES.grep(/kasroute\\.rb/)}" unless $LOADED_FEATURES.grep(/kasroute\\.rb/).first.start_with?(#{home.dump})
        c = KasRoute::Client.new(url: #{CLUSTER.api_url.dump}, secret: #{CLUSTER.secret.dump})
        r = c.request(agent: #{KRTest::AGENT_ID}, service: "web", path: "/bytes?n=321")
        puts "status=\#{r.status} bytes=\#{r.body.bytesize} lib=\#{KasRoute.library_version}"
        c.close
      RUBY
      out = run_cmd(env, RbConfig.ruby, "-e", code, chdir: tmp)
      assert_match(/status=200 bytes=321 lib=#{KasRoute.library_version}/, out)
    end
  end
end
