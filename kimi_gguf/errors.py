"""The one error type users see: a one-line message naming the file, tensor, key or field."""


class KimiError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2."""
