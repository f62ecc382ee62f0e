"""The pieces of the SGID method the stages put together: guidance mapping, prompts, candidate generation and
its batched loop, edge maps, CLIP embeddings, candidate selection, quality filters, the training loop and its
augmentations, and the decoded-image cache."""

# Registers the catalog's upgrade of tables whose columns method code defines (an older run's captions), so that any
# stage using method code reads them as today's.
from sgid_utils.augment import prompts  # noqa: E402, F401
