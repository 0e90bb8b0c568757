"""The pipeline: consume (fetch, decode, tokenize once) -> batching -> inference -> publish, and the
checkpoint, the one owner of offsets (docs/ARCHITECTURE.md follows one record through it)."""
