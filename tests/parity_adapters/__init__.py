"""Per-method adapters for tests/parity.py: ``<method>.run(fixture, model, cfg, variants)``."""
