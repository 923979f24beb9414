"""Privacy: PII found and replaced by stable placeholders before anything reaches a model."""
