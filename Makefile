# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MICROPYTHON := node_modules/@micropython/micropython-webassembly-pyscript/package.json
UMQTT := .cache/micropython-lib/umqtt/simple.py

.PHONY: demo test bench link-codes clean mosquitto brokers postgres console-assets

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Real MicroPython (WebAssembly) for the agent tests and benchmarks, pinned by package-lock.json.
$(MICROPYTHON): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# micropython-lib's umqtt.simple for the virtual device (from PyPI, see simulator/micropython_lib.py).
$(UMQTT): $(STAMP)
	$(BIN)/python -m simulator.micropython_lib

# The hub tests start their own Mosquitto brokers; install it (Debian package) when missing.
mosquitto:
	@if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; \
		else \
			echo "make test needs Mosquitto: run 'sudo apt-get install mosquitto' and try again" >&2; exit 1; \
		fi; \
	fi

# tests/test_brokers.py and test_scaleout.py start RabbitMQ and NATS instances of their own,
# tests/test_console.py drives Debian's chromium (Playwright never downloads a browser here), and
# tests/test_deploy.py runs docs/deploy-bastion.md, whose backup step uses the sqlite3 shell.
brokers:
	@for pair in rabbitmq-server:/usr/lib/rabbitmq/bin/rabbitmq-server nats-server:/usr/sbin/nats-server \
			chromium:/usr/bin/chromium sqlite3:/usr/bin/sqlite3; do \
		package=$${pair%%:*}; binary=$${pair#*:}; \
		if [ ! -x "$$binary" ]; then \
			if [ "$$(id -u)" = 0 ]; then \
				apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$package; \
			else \
				echo "make test needs $$package: run 'sudo apt-get install $$package' and try again" >&2; exit 1; \
			fi; \
		fi; \
	done

# The PostgreSQL sink tests use the machine's PostgreSQL on 127.0.0.1:5432 (a database of their own).
postgres:
	@if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v pg_ctlcluster >/dev/null 2>&1; then \
			pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | tail -1) main start; \
		fi; \
		pg_isready -q -h 127.0.0.1 -p 5432 || { echo "make test needs PostgreSQL on 127.0.0.1:5432 with trust auth: \
start it (pg_ctlcluster <version> main start) and try again" >&2; exit 1; }; \
	fi

demo: $(STAMP)
	$(BIN)/linkseal demo

test: $(STAMP) $(MICROPYTHON) $(UMQTT) mosquitto brokers postgres
	$(BIN)/python -m pytest

bench: $(STAMP) $(MICROPYTHON) $(UMQTT) mosquitto brokers postgres
	$(BIN)/python bench/run.py

# The console's chart library, from npm (package-lock.json), copied into the Python package:
# shipped with it, so no browser ever fetches anything from elsewhere.
console-assets: $(MICROPYTHON)
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css node_modules/uplot/LICENSE \
		hub/service/console/static/vendor/
	mv hub/service/console/static/vendor/LICENSE hub/service/console/static/vendor/uPlot.LICENSE

# Regenerate agent/link_codes.py after editing hardware/links/*.toml.
link-codes: $(STAMP)
	$(BIN)/python -m hardware.link_registry

clean:
	rm -rf $(VENV) node_modules .cache .pytest_cache .hypothesis *.egg-info
