"""Where messages go: the InfluxDB writer, its delivery, the spool and its drain, dead letters."""
