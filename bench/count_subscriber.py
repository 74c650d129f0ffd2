"""The baseline subscriber, run as its own process like the hub: paho, QoS 1, counts messages.

    python bench/count_subscriber.py PORT EXPECTED CLIENT_ID [--persistent] [--subscribe-only] [--topic FILTER]

Prints `subscribed` once the broker confirmed the subscription, then `done SECONDS` when
EXPECTED messages have arrived, SECONDS counted from the moment it was subscribed.
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    port, expected, client_id = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    persistent, subscribe_only = "--persistent" in sys.argv, "--subscribe-only" in sys.argv
    topic = sys.argv[sys.argv.index("--topic") + 1] if "--topic" in sys.argv else "linkseal/v1/+/rec"
    count = 0
    done, subscribed = threading.Event(), threading.Event()

    def on_message(client, userdata, message):
        nonlocal count
        count += 1
        if count == expected:
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent)
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    if not subscribed.wait(10):
        sys.exit("the broker did not confirm the subscription")
    start = time.perf_counter()
    print("subscribed", flush=True)
    if not subscribe_only:
        if not done.wait(300):
            sys.exit(f"got {count} of {expected}")
        print(f"done {time.perf_counter() - start}", flush=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    main()
