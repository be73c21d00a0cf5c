"""What a run writes to resume and to deliver: states, resume checks, model checkpoints (docs/run-folder.md)."""
