"""The params: their schema, loading with overrides (an ablation variant's too), library versions, where each
default comes from, and the backbones and training configurations they ask for."""
