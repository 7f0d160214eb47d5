# frozen_string_literal: true

module KasRoute
  # Base class of every error the gem raises for a failed library call.
  # #code is the library's negative kr_error code, #name its symbolic name
  # from kr_err_name() ("NOTCONN", "AUTH", ...); the message is the
  # library's own text for the failed call (kr_bclient_last_error()), or
  # kr_strerror() of the code when the library left none.
  class Error < StandardError
    attr_reader :code, :name

    def initialize(message = nil, code: nil, name: nil)
      super(message)
      @code = code
      @name = name
    end
  end

  # kas refused the credentials (AUTH): a wrong secret, a bad, expired or
  # wrongly signed token.
  class Unauthorized < Error; end

  # The credentials are valid but do not allow this agent (PERM).
  class Forbidden < Unauthorized; end

  # The agent is not connected to the kas tier before kas's route deadline
  # (NOTCONN).
  class AgentNotConnected < Error; end

  # The agent has no service of that name (NOSERVICE).
  class UnknownService < Error; end

  # The call's timeout passed (TIMEDOUT). A stream is unchanged by a read
  # that timed out and may be read again.
  class Timeout < Error; end

  # The peer broke the protocol, or no protocol version is shared
  # (PROTO, VERSION, FLOWCTL, FRAMESIZE).
  class ProtocolError < Error; end

  # Reaching kas failed or the connection or stream ended (IO, TLS, CLOSED,
  # RESET, GOAWAY, STREAMLIMIT, IDEXHAUSTED).
  class ConnectionError < Error; end

  # The stream, response or client is closed (CLOSED), or was reset by the
  # other side (RESET).
  class Closed < ConnectionError; end

  # The service behind the agent failed: refused the connection, broke the
  # HTTP exchange (UPSTREAM).
  class UpstreamError < Error; end

  # Invalid options for the library (CONFIG, INVAL, ADDR, TOOBIG).
  class ConfigError < Error; end

  # A client made in another process was used after fork: a child process
  # makes its own client (the parent's I/O thread does not exist there).
  class ForkError < Error; end

  # The shared library cannot be loaded, lacks a function or has an
  # incompatible version.
  class LibraryError < ::LoadError; end

  # kr_err_name() -> exception class. Names not listed raise Error itself.
  ERROR_CLASSES = {
    "AUTH" => Unauthorized,
    "PERM" => Forbidden,
    "NOTCONN" => AgentNotConnected,
    "NOSERVICE" => UnknownService,
    "TIMEDOUT" => Timeout,
    "PROTO" => ProtocolError,
    "VERSION" => ProtocolError,
    "FLOWCTL" => ProtocolError,
    "FRAMESIZE" => ProtocolError,
    "IO" => ConnectionError,
    "TLS" => ConnectionError,
    "GOAWAY" => ConnectionError,
    "STREAMLIMIT" => ConnectionError,
    "IDEXHAUSTED" => ConnectionError,
    "CLOSED" => Closed,
    "RESET" => Closed,
    "UPSTREAM" => UpstreamError,
    "CONFIG" => ConfigError,
    "INVAL" => ConfigError,
    "ADDR" => ConfigError,
    "TOOBIG" => ConfigError,
  }.freeze
end
