"""The language model as an unreliable dependency: provider shapes and a resilient client."""
