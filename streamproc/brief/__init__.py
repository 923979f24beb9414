"""The case brief: its model, the deterministic generator, and how analysts see it."""
