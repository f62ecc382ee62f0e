"""The pieces of the SGID method the stages put together: guidance mapping, prompts, candidate generation and
its batched loop, edge maps, CLIP embeddings, candidate selection, quality filters, the training loop and its
augmentations, and the decoded-image cache."""
