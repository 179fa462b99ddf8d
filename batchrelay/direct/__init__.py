"""`batchrelay run` in direct file mode: the run packs, submits, polls and collects its own
provider batches through the worker's adapters, keeping only a small record in Redis."""
