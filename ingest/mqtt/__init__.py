"""The MQTT session of the consumer: its own 3.1.1 codec, the session, acks and TLS."""
