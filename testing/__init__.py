"""What the tests, the benchmark (`bench`), the demo and the reliability runs share; not shipped.

- `testing.broker`: a real Kafka-compatible broker (`kafka_broker`), tansu of our own
  (`TansuBroker`, which can be frozen).
- `testing.topics`: `Topics` (input, output, dead-letter topic, group), fresh per run.
- `testing.worker_process`: the worker as a child process (`start_worker`, `WorkerProcess`).
- `testing.kafka`: create topics, produce, read back, committed offsets.
- `testing.http`: HTTP GET and Prometheus text; `testing.ports`: free ports, waiting on one.
- `testing.models`: a tiny random BERT classifier (`build_tiny_model`).
- `testing.reliability`: the fault-injection harness, scenarios and hostile-input catalog.

May import `schemas`, `worker`, `training`; never `tests`.
"""
