"""The benchmark, `python -m bench` (`make bench`): model-only ceiling, worker end to end, naive
baseline, report. Not shipped (the wheel and the image carry only the product).

Modules: `corpus` (real comments repeated to N), `ceiling` (tokenize + infer, no Kafka),
`end_to_end` (the worker through the broker: saturation throughput and paced latency), `naive`
(one message at a time through `transformers.pipeline`), `profile` (py-spy summary of the
worker), `stages` (each stage's wall time with the machine's CPU steal, load and other
processes' share, from `testing.machine_noise`), `report` (JSON + markdown), `runner` (all of
it), `__main__` (the command line). The broker, topics and worker process come from `testing`.
"""
