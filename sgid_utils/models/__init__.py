"""Model loading for every stage (one error for an unreachable id), the builders of real and tiny architectures, the
smoke profile's tiny models, and FLOP counts."""
