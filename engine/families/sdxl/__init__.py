"""SDXL as kohya's ``sdxl_train.py`` trains it (docs/sdxl.md): tiny models, token layouts,
text encoding, size/crop conditioning and the single-file key layout."""
