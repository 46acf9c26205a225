"""Corpus preparation, the embedded mini corpus, features, datasets and batching."""
