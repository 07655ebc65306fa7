"""What tests and benchmarks share: random-weight models in the real layouts (random_models,
tiny_models, metric_models), the node schemas (workflow_schema) and the test images (images).
Imported as ``tests.support``; run benchmarks as ``python -m bench.NAME`` from the repository."""
