"""streamproc: Kafka stream processor that turns raw fraud signals into case briefs."""

__version__ = "0.1.0"
