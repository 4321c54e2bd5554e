"""Alerting in the service: the engine's task, the alert store, the outbox that publishes alerts."""
