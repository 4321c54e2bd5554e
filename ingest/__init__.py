"""The citysense service: MQTT consumer, pipeline, InfluxDB writer, dead letters and CLI."""
