"""The project a user builds before a run, without torch: what the wizard edits.

- :mod:`engine.project.records`: one image with its caption, tags and quick findings;
- :mod:`engine.project.dataset_index`: the images of a folder, metadata JSON or dataset/run TOML,
  read once and written back to metadata from memory;
- :mod:`engine.project.labels`: the caption/tag store (sidecar files or metadata entries) with
  an edit log and undo;
- :mod:`engine.project.run_draft`: the run file being written, as dotted values over a
  comment-preserving TOML document.

The wizard (sdft_tui) holds one of each in its session and adds no file format of its own.
"""
