"""Keel test suite: mirrors the package tree."""
