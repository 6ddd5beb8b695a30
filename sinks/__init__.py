"""Keel sinks."""
