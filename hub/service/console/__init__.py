"""The operator's console: the HTTP server, its JSON API and the static page it serves."""
