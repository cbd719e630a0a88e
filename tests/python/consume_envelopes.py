"""Reads Chronicle's topics with kafka-python, an independent Kafka client, and checks
that every message is an event envelope of the documented shape.

Usage: consume_envelopes.py BROKERS TOPIC[,TOPIC...] EXPECTED_COUNT
Prints one JSON object: {"count": n, "events": [[event_id, aggregate_id, sequence], ...]}.
Exits non-zero, with the reason on stderr, when a message is not a valid envelope.
"""
import json
import sys
import uuid
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition

FIELDS = {
    "event_id": str, "global_position": int, "aggregate_type": str, "aggregate_id": str,
    "sequence": int, "event_type": str, "event_version": str, "recorded_at": str,
    "payload": dict, "metadata": dict,
}


def check(envelope):
    for name, kind in FIELDS.items():
        if not isinstance(envelope.get(name), kind):
            raise ValueError(f"field {name!r} missing or not {kind.__name__}: {envelope}")
    uuid.UUID(envelope["event_id"])
    datetime.fromisoformat(envelope["recorded_at"].replace("Z", "+00:00"))
    for name in ("actor", "correlation_id", "causation_id"):
        if name not in envelope["metadata"]:
            raise ValueError(f"metadata.{name} missing: {envelope}")
    if envelope["payload"].get("type") != envelope["event_type"]:
        raise ValueError(f"payload type is not the event type: {envelope}")


def main():
    brokers, topics, expected = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000)
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    events = []
    for message in consumer:
        envelope = json.loads(message.value)
        check(envelope)
        if message.key.decode() != envelope["aggregate_id"]:
            raise ValueError(f"key {message.key!r} is not the aggregate id")
        events.append([envelope["event_id"], envelope["aggregate_id"], envelope["sequence"]])
        if len(events) >= expected:
            break
    print(json.dumps({"count": len(events), "events": events}))


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the reason goes to the Rust test that runs this
        print(f"invalid: {error}", file=sys.stderr)
        sys.exit(1)
