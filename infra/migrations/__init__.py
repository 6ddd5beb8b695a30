"""Versioned SQL migrations (a package only so the .sql files ship with Keel)."""
