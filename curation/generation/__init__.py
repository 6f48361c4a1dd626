"""Generation: the teacher writes task rows and preference candidates (distilabel pipelines).

`generate` plans the requests (`plan`), runs each phase (`runner`: base rows, evolved rows,
judged candidates from `judge`) through distilabel steps (`gensteps`), commits shards exactly
once and keeps the spend ledger (`budget`); `raygen` runs the same pipelines on Ray. The rest of
the `curation` package curates what comes out (dedup, filters, agreement, decontamination).
"""
