"""Avro schemas (one .avsc per message) and the codec."""
