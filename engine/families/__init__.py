"""Model families: one adapter per family behind one generic trainer.

SD1, SD2 (512 and 768-v) and SDXL differ in a handful of places, and each place is a
question the Trainer, the data pipeline, the cache, the hooks, the planner and the wizard
ask the family's adapter instead of testing ``v2`` flags:

* detection: which family a file, folder or hub id holds;
* loading: single file, diffusers folder, hub id, into fp32 CPU modules;
* text encoding: tokenizers and token layout, hidden states, any pooled output;
* extra conditioning: what the U-Net needs besides the states (SDXL: pooled text and
  size/crop time ids, recorded per image at bucketing time);
* the VAE's scale factor (0.18215 SD1/SD2, 0.13025 SDXL) and its safe dtype;
* saving in every format (single file keys, diffusers folder);
* the sampling pipeline;
* the planner's memory coefficients.

Adding a family means one folder here and one registry entry (docs/sdxl.md has the
proposed interface and where SD1/SD2 code for each job lives today). ``sdxl/`` holds the
SDXL foundations, not yet wired into the Trainer.
"""
