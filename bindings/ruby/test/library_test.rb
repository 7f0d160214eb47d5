# frozen_string_literal: true

# Loading and the version check, and the mapping of library error codes to
# exception classes (no daemons needed).
require_relative "test_helper"

class LibraryTest < Minitest::Test
  def test_library_version_is_checked_at_load
    v = KasRoute.library_version
    assert_match(/\A#{KasRoute::LIBRARY_MAJOR}\.\d+\.\d+\z/, v)
    assert_equal v, KasRoute::Native.kr_version
  end

  def test_incompatible_versions_are_refused
    major = KasRoute::LIBRARY_MAJOR
    assert_equal "#{major}.9.0", KasRoute::Native.check_version("#{major}.9.0")
    e = assert_raises(KasRoute::LibraryError) { KasRoute::Native.check_version("#{major + 1}.0.0") }
    assert_match(/needs libkasroute/, e.message)
    assert_raises(KasRoute::LibraryError) { KasRoute::Native.check_version("#{major}.0.0-rc1") }
    assert_raises(KasRoute::LibraryError) { KasRoute::Native.check_version(nil) }
    assert_kind_of ::LoadError, e
  end

  def test_a_missing_library_is_a_load_error
    lib = File.expand_path("../lib", __dir__)
    code = 'begin; require "kasroute"; rescue LoadError => e; puts e.class; puts e.message; exit 3; end'
    out, st = Open3.capture2({ "KASROUTE_LIB" => "/nonexistent/libkasroute.so.0" },
                             RbConfig.ruby, "-I", lib, "-e", code)
    assert_equal 3, st.exitstatus, out
    assert_match(/KasRoute::LibraryError/, out)
    assert_match(%r{cannot load /nonexistent/libkasroute.so.0}, out)
  end

  def test_error_codes_map_to_classes
    {
      -16 => KasRoute::Unauthorized, -25 => KasRoute::Forbidden,
      -17 => KasRoute::AgentNotConnected, -18 => KasRoute::UnknownService,
      -12 => KasRoute::Timeout, -5 => KasRoute::ProtocolError,
      -19 => KasRoute::ConnectionError, -20 => KasRoute::ConnectionError,
      -8 => KasRoute::Closed, -15 => KasRoute::Closed,
      -23 => KasRoute::UpstreamError, -21 => KasRoute::ConfigError,
      -1 => KasRoute::Error, -9999 => KasRoute::Error
    }.each do |code, klass|
      e = KasRoute::Native.error(code, "why #{code}")
      assert_instance_of klass, e, "code #{code}"
      assert_equal code, e.code
      assert_equal KasRoute::Native.kr_err_name(code), e.name
      assert_equal "why #{code}", e.message
      assert_kind_of KasRoute::Error, e
    end
    assert_equal "NOTCONN", KasRoute::Native.error(-17).name
    refute_empty KasRoute::Native.error(-17).message
  end

  def test_timeouts_are_seconds
    assert_equal 0, KasRoute::Native.timeout_us(nil)
    assert_equal 1_500_000, KasRoute::Native.timeout_us(1.5)
    assert_equal 1, KasRoute::Native.timeout_us(1e-9)
    assert_raises(ArgumentError) { KasRoute::Native.timeout_us(0) }
    assert_raises(ArgumentError) { KasRoute::Native.timeout_us(-1) }
    assert_raises(ArgumentError) { KasRoute::Native.timeout_us("1") }
  end

  def test_bad_options_raise_config_errors
    e = assert_raises(KasRoute::ConfigError) { KasRoute::Client.new(url: "gopher://x", secret: "s" * 32) }
    refute_empty e.message
    assert_raises(KasRoute::ConfigError) { KasRoute::Client.new(url: "tcp://127.0.0.1:1", secret: "short") }
  end
end
