# frozen_string_literal: true

module KasRoute
  # An HTTP response from a service behind an agent.
  #
  # status  Integer status code
  # fields  the header fields in the order received, as [name, value]
  #         pairs with lower-case names
  # headers the same as a Hash (lower-case name => value; repeated fields
  #         joined with ", ")
  # body    the body as a binary String, or nil when the request was made
  #         with a block (the body went to the block in chunks)
  class Response
    attr_reader :status, :fields
    attr_accessor :body

    def initialize(status, fields, body = nil)
      @status = status
      @fields = fields.freeze
      @headers = nil
      @body = body
    end

    def headers
      @headers ||= begin
        h = {}
        @fields.each do |name, value|
          h[name] = h.key?(name) ? "#{h[name]}, #{value}" : value
        end
        h.freeze
      end
    end

    # The value of a header field (any case), nil when absent.
    def [](name)
      headers[name.to_s.downcase]
    end

    # 2xx
    def success?
      status >= 200 && status < 300
    end

    def inspect
      "#<#{self.class} #{status} #{@fields.size} header fields" \
        "#{body ? ", #{body.bytesize} body bytes" : ''}>"
    end
  end
end
