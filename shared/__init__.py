"""Code shared by the luccs-fallback services: contracts, configuration, Kafka and database helpers."""
