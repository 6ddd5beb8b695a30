"""Keel engine: the pure matching core (no Kafka, no I/O, no clock).

Import the pieces from their modules (engine.domain, engine.book, engine.engine,
engine.snapshot); this package stays light so importing a submodule stays cheap.
"""
