"""What is wrong: alert rules, their evaluation state and the alert lifecycle (SPEC §5).

Empty until the rules issue: the ingest path stores data but raises no alerts yet.
"""
