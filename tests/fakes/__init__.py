"""Fake servers the tests talk to instead of the services on the internet."""
