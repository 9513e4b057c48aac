#!/usr/bin/env python3
"""Read a TensorBoard event file with the real tensorboard package, independently of bertkit.

Usage: python3 scripts/check_tensorboard.py EVENT_FILE

Checks that tensorboard's record reader consumes the whole file (its loader stops silently at a
bad CRC or a truncated record, so the record sizes must add up to the file size), that the first
event is file_version "brain.Event:2", and that every other value is a simple_value scalar. Then
loads the scalars with tensorboard's EventAccumulator and prints JSON {tag: [[step, value], ...]}
(steps in file order) to stdout. Exits 1 with a message on stderr if anything is wrong.
"""
import json
import os
import sys


def fail(msg):
    print(f"check_tensorboard: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: check_tensorboard.py EVENT_FILE")
    path = sys.argv[1]
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto import event_pb2
    except ImportError as e:
        fail(f"cannot import tensorboard ({e}): scripts/test.sh installs it")
    if not os.path.isfile(path):
        fail(f"{path}: no such file")

    try:
        records = list(RawEventFileLoader(path).Load())
        # Each record is framed by 8 bytes of length and two 4-byte CRCs.
        consumed = sum(len(r) + 16 for r in records)
        size = os.path.getsize(path)
        if consumed != size:
            fail(f"{path}: tensorboard read {len(records)} records ({consumed} of {size} bytes)")
        events = [event_pb2.Event.FromString(r) for r in records]
    except Exception as e:  # noqa: BLE001 - any reader or protobuf error is a parse failure
        fail(f"{path}: tensorboard cannot parse it: {e!r}")
    if not events or events[0].file_version != "brain.Event:2":
        fail(f"{path}: the first event is not file_version brain.Event:2")
    for i, e in enumerate(events[1:], 1):
        if e.WhichOneof("what") != "summary":
            fail(f"{path}: event {i} has no summary")
        for v in e.summary.value:
            if v.WhichOneof("value") != "simple_value":
                fail(f"{path}: event {i}, tag {v.tag!r}: not a simple_value")

    # size 0: keep every scalar; no purging, so the output is exactly what the file holds.
    acc = EventAccumulator(path, size_guidance={"scalars": 0}, purge_orphaned_data=False)
    acc.Reload()
    out = {tag: [[s.step, s.value] for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    want = sum(len(e.summary.value) for e in events[1:])
    got = sum(len(v) for v in out.values())
    if got != want:
        fail(f"{path}: EventAccumulator loaded {got} scalars, the file has {want}")
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
