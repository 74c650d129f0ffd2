"""Does the broker bind client ids to accounts? Checked before `hub run` subscribes with the
account `hub broker-config` generates.

If it does not, any login that asks for the hub's client id with a persistent session takes
the hub's session, and the records queued in it are gone. The probe asks twice, with two new
random client ids and persistent sessions: on a broker that binds ids to accounts both
connections get the account's one session, so the second finds it present; on one that does
not, the second id is new to it and its session is not. The probe never acknowledges a
message, so whatever the broker hands it stays queued for the hub; the sessions it leaves on
a broker that does not bind ids are cleared again.
"""

import queue
import secrets
import ssl

import paho.mqtt.client as mqtt

PROBE_TIMEOUT = 10.0


class ProbeFailed(Exception):
    """The broker could not be asked (unreachable, refused the login)."""


def _session_present(broker, client_id: str, persistent: bool) -> bool:
    answers = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                         protocol=mqtt.MQTTv311, manual_ack=True)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file, certfile=broker.cert_file, keyfile=broker.key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
    if broker.username:
        client.username_pw_set(broker.username, broker.password)
    client.on_connect = lambda c, u, flags, rc, p: answers.put((rc, bool(flags.session_present)))
    client.on_disconnect = lambda *args: answers.put(None)
    try:
        client.connect(broker.host, broker.port, 30)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeFailed(exc.strerror or str(exc)) from None
    client.loop_start()
    try:
        answer = answers.get(timeout=PROBE_TIMEOUT)
    except queue.Empty:
        answer = None
    finally:
        client.disconnect()
        client.loop_stop()
    if answer is None or answer[0].is_failure:
        raise ProbeFailed("no CONNACK" if answer is None else str(answer[0]))
    return answer[1]


def client_ids_bound(broker) -> bool:
    """True when the broker gives every login of this account one session whatever client id it asks for."""
    ids = [f"linkseal-probe-{secrets.token_hex(6)}" for _ in range(2)]
    _session_present(broker, ids[0], persistent=True)
    bound = _session_present(broker, ids[1], persistent=True)
    if not bound:  # two sessions of our own making on the broker: clear them
        for client_id in ids:
            _session_present(broker, client_id, persistent=False)
    return bound
