"""Thin wrappers over Kafka clients: admin, embedded broker, client configs."""
