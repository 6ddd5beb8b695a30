"""Adapters to the outside world: settings, embedded services, supervisor, CLI, Kafka helpers."""
