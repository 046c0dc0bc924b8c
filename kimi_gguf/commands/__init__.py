"""One module per `kimi-gguf` subcommand.

Each module defines `register(subparsers)` which adds its parser and sets `func` (a callable taking
the parsed args and returning an exit code). `kimi_gguf.cli` discovers the modules automatically,
so adding a subcommand never touches a shared file.
"""
