"""Network context: accounts linked by a shared entity (issue 25)."""
