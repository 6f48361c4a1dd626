"""Embedded Argilla server: our SQLite search engine, launcher, worker and process control.

Modules here are imported inside `.venv-argilla` (argilla-server's pins clash with the main stack),
except `control`, which is stdlib-only so the main-venv CLI can start and stop the server.
Nothing here may import torch, transformers or distilforge's heavy modules.
"""

ENGINE_NAME = "distilforge-sqlite"
"""Value of ARGILLA_SEARCH_ENGINE that selects `labeling.server.engine.SQLiteSearchEngine`."""
