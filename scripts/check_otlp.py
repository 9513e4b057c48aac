#!/usr/bin/env python3
"""Reads what `bertkit serve --otlp-endpoint` exported (a file of OTLP/HTTP JSON bodies, one per
line) with OpenTelemetry's own protobuf definitions (the opentelemetry-proto package), strictly:
an unknown field, a wrong type or a bad enum fails. OTLP/JSON writes trace and span ids in hex
where protobuf's JSON mapping has base64; they are converted first, as OTLP receivers do.
Prints the spans as JSON, for tests/cli_serve_otlp.rs.

usage: check_otlp.py BODIES.jsonl
"""
import base64
import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def hex_ids_to_base64(span):
    for k in ("traceId", "spanId", "parentSpanId"):
        if k in span:
            span[k] = base64.b64encode(bytes.fromhex(span[k])).decode()


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind)


def main():
    spans = []
    resources = []
    with open(sys.argv[1]) as f:
        for line in f:
            body = json.loads(line)
            for rs in body["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        hex_ids_to_base64(s)
            req = json_format.Parse(json.dumps(body), ExportTraceServiceRequest())
            for rs in req.resource_spans:
                resources.append({a.key: value(a.value) for a in rs.resource.attributes})
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        spans.append({
                            "scope": ss.scope.name,
                            "name": s.name,
                            "kind": Span.SpanKind.Name(s.kind),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "status": s.status.code,
                            "attributes": {a.key: value(a.value) for a in s.attributes},
                        })
    print(json.dumps({"resources": resources, "spans": spans}))


if __name__ == "__main__":
    main()
