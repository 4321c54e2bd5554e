"""Operator tooling, outside the data path: the local stack, broker config, CA, workers, demo."""
