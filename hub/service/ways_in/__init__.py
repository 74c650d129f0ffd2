"""The hub's ways in: the MQTT adapter (one hub on its broker), the AMQP adapter (hub workers on
RabbitMQ), the LoRaWAN network servers' integrations, and the broker probe run before them."""
