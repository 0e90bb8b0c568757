"""Fault injection: `harness` (worker supervisor, id ledger), `scenarios` (kill -9, broker freeze,
overload, SIGTERM, rebalance), `catalog` (hostile input). Small in `make test`
(tests/reliability), full size in `make reliability` (scripts/reliability.py)."""
