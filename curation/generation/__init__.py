"""Generation: the teacher writes task rows and preference candidates (distilabel pipelines).

`generate` plans the requests (`plan`), runs each phase (`runner`: base rows, evolved rows,
judged candidates from `judge`) through distilabel steps (`gensteps`), commits shards exactly
once and keeps the spend ledger (`budget`); `raygen` runs the same pipelines on Ray. The rest of
the `curation` package curates what comes out (dedup, filters, agreement, decontamination).
"""
import sys as _sys

_hook = _sys.excepthook
import distilabel  # noqa: E402,F401 - its __init__ installs rich's traceback hook with show_locals=True

# Restore the hook we had: a traceback that prints locals can print an API key (an endpoint's
# settings, a request's headers), and nothing of ours may. Every distilabel import of ours is
# under this package, so this runs before any of them.
_sys.excepthook = _hook
