"""SDXL as kohya's ``sdxl_train.py`` trains it (docs/sdxl.md): its adapter, SDXL base 1.0's
configs, loading and saving in every format, tiny models, token layouts, text encoding,
size/crop conditioning and the single-file key layout."""
