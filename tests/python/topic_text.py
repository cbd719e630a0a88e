"""Reads every message of Chronicle's topics with kafka-python, an independent Kafka
client, and prints each value as received (one per line), for tests that look for
plain text that must not be there.

Usage: topic_text.py BROKERS TOPIC[,TOPIC...] EXPECTED_COUNT
"""
import sys

from kafka import KafkaConsumer, TopicPartition


def main():
    brokers, topics, expected = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=10000)
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    consumer.seek_to_beginning()
    seen = 0
    for message in consumer:
        sys.stdout.write(message.value.decode("utf-8", errors="replace") + "\n")
        seen += 1
        if seen >= expected:
            break
    if seen < expected:
        print(f"only {seen} of {expected} messages", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
