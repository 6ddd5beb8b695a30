"""Keel engine."""
