"""Keel streams."""
