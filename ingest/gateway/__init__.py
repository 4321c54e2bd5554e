"""The field gateways (issue 20): TCP servers that speak what stations speak."""
