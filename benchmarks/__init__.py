"""End-to-end benchmark of citysense against the broker's own limit: `make bench`."""
