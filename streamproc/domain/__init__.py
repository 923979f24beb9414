"""Pure domain logic: per-account windows, case assembly, features. No Kafka, no faust."""
