"""Delivery inward: the sinks that take verified records off the outbox, the MQTT 5 publisher
they use, and the forwarder thread that drives them."""
