"""Data: named sources, seeded splits, batch augmentation and in-memory batches."""
