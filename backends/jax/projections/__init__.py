"""Exact projection operators, one module per constraint kind, vectorised over batches."""
