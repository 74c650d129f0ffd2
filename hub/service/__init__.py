"""The hub service around the core: ingest.py (verify, batch, commit), storage.py (SQLite),
mqtt_adapter.py (paho: `hub run`), sinks.py and forwarder.py (delivery inward),
capture.py (capture files), metrics.py (Prometheus),
log.py (event log lines), config.py (broker URL, hub.toml)."""
