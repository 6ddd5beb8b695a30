"""Observability: metrics catalogue, alert rules, dashboards, keel top, keel loadgen."""
