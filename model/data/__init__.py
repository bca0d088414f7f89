"""Training data: the offline synthetic corpus builder, the manifest format, and importers for real datasets."""
