"""Running as several workers: partition leases (issue 16)."""
