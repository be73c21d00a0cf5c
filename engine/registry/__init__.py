"""Registries of named choices: one table per kind, read by the schema, the check, the engine and the UI."""
