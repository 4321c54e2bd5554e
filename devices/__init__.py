"""What devices say: device kinds, payload schemas, the topic grammar and the registry."""
