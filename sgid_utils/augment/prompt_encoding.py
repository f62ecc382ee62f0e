"""compel's weighted-prompt embeddings for a Stable Diffusion pipeline, the negative prompt encoded once per run."""

from __future__ import annotations

import torch


class PromptEncoder:
    """compel's weighted-prompt embeddings for the pipeline's own tokenizer and text encoder."""

    def __init__(self, pipe) -> None:
        from compel import CompelForSD  # 4 s to import: here, so that a finished stage skips without it

        self.compel = CompelForSD(pipe)
        self.negatives: dict[str, torch.Tensor] = {}

    @torch.inference_mode()
    def __call__(self, prompt: str, negative: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        out = self.compel(prompt, negative_prompt=negative)
        return out.embeds, out.negative_embeds

    @torch.inference_mode()
    def many(self, prompts: list[str], negative: str = "") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each prompt's (embeds, negative embeds) as ``__call__`` gives them, the negative encoded once per run.

        compel's pair call encodes the negative again for every prompt, then pads the pair to one length with the
        empty prompt's embedding (its long prompts are not truncated: 77, 154, ... tokens); this pads the cached one
        the same way. compel itself runs the text encoder prompt by prompt (one pass per weighted fragment below 1),
        so the prompts of a chunk are not stacked into one encoder call here: that would re-implement its weighting.
        """
        compel = self.compel.compel
        if negative not in self.negatives:
            self.negatives[negative] = compel.build_conditioning_tensor(negative)
        pairs = []
        for prompt in prompts:
            embeds, negative_embeds = compel.pad_conditioning_tensors_to_same_length(
                [compel.build_conditioning_tensor(prompt), self.negatives[negative]])
            pairs.append((embeds, negative_embeds))
        return pairs
