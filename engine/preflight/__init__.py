"""Checks that run before training: --check and the start of every run (docs/architecture.md)."""
