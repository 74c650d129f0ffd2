"""The hub: core/ (sans-I/O verification and accounting), service/ (ingest, storage, MQTT,
metrics), keys/ (key file, PKI, broker configuration), cli.py (`linkseal hub`)."""
