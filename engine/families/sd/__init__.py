"""SD 1.x and SD 2.x (512 and 768-v): one lineage over the shared model code in engine/models
(loading, key maps, CLIP's tokenizer and text encoding, saving)."""
