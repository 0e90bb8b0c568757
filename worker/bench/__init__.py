"""`moderation-worker bench`: model-only ceiling, worker end to end, naive baseline, report.

Modules: `corpus` (real comments repeated to N), `broker` (a real Kafka-compatible broker),
`ceiling` (tokenize + infer, no Kafka), `end_to_end` (the worker through the broker: saturation
throughput and paced latency), `naive` (one message at a time through `transformers.pipeline`),
`profile` (py-spy summary of the worker), `report` (JSON + markdown), `runner` (all of it).
"""
