# frozen_string_literal: true

module KasRoute
  # The gem's version. It follows the C library's: the gem binds the API of
  # libkasroute LIBRARY_MAJOR.x and needs at least LIBRARY_MINIMUM.
  VERSION = "0.1.0"

  # The SONAME major version this gem is written against; a library with
  # another major version has another ABI and is refused at load.
  LIBRARY_MAJOR = 0

  # The oldest library release with every function the gem attaches
  # (include/kasroute/blocking.h appeared in 0.1.0).
  LIBRARY_MINIMUM = "0.1.0"
end
