"""The per-message path: decode and validate, stamp, hash plates, judge clocks, batch."""
