"""Names of the RabbitMQ topology hub workers share with the broker's account rules
(docs/scale-out.md): what `hub topology` declares, the workers consume and
`hub broker-config --rabbitmq` grants."""

HASH_EXCHANGE = "linkseal.partitions"  # x-consistent-hash over the partition queues
PARTITION_QUEUE = "linkseal.partition.{}"  # quorum queues with single active consumer
STATUS_QUEUE = "linkseal.status"  # status messages, on their way into their device's partition
RECORD_KEY, STATUS_KEY = "linkseal.v1.*.rec", "linkseal.v1.*.status"  # bindings from amq.topic
STATUS_HEADER = "linkseal-status"  # marks a status message re-published into a partition


def topic_of(routing_key: str, status: bool) -> str:
    """The MQTT topic a routing key came from: the MQTT plugin swaps '/' and '.'."""
    topic = routing_key.translate(str.maketrans("./", "/."))
    return topic[: -len("/rec")] + "/status" if status else topic


def routing_key_of(topic: str) -> str:
    """The routing key the MQTT plugin gives a topic."""
    return topic.translate(str.maketrans("./", "/."))
