"""The learning benchmark (`sdft bench --learning`): a small model trained from scratch on
generated concepts, scored by validation loss and prompt adherence (docs/learning-bench.md).

concepts.py draws the dataset, model.py builds the calibrated random model, trained.py loads
a trained file onto it, scoring.py measures it, learning.py runs the whole benchmark,
report.py and plot.py write what it found. Nothing here imports torch at import time.
"""
