"""batchrelay."""
