"""Evaluation: leave-one-domain-out protocol, records, selection, tables and reports."""
