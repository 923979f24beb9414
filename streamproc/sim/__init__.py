"""Synthetic traffic: seeded fraud scenarios with expected outcomes, for the demo and tests."""
