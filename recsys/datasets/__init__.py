"""MovieLens data: format parsers, pandas readers, fetching and the synthetic generator."""
