"""driftmon service: Kafka in, drift statistics, Prometheus and webhooks out."""

__version__ = "0.1.0"
