"""Keel gateway."""
