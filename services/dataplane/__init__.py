"""Data plane: embedded PostgreSQL + Valkey (``embedded``, on ``postgres``, ``valkey``,
``processes`` and ``locking``), SQL migrations (``migrations``) and URL-based clients (``urls``).

Import from the submodules; this package module stays empty so that starting the embedded
servers does not import the client libraries.
"""
