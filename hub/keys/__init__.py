"""Key management: keyfile.py (the hub key file, HKDF device keys, rotation, device configs),
keystore.py (encryption at rest), pki.py (the CA for mutual TLS), broker_config.py (the
Mosquitto configuration), cli.py (`linkseal keys`)."""
