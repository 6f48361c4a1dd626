"""Human review of curated data in Argilla.

`labeling.server` runs inside `.venv-argilla` (the embedded Argilla 2.8 server and our SQLite search
engine); `labeling.client` and `labeling.cli` run in the main venv. Keep this package import light:
the server venv has none of distilforge's training stack.
"""
