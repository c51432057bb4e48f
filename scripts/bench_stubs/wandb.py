"""Stand-in for wandb on the GPU benchmark machine: f5-tts's trainer imports it, inference never uses it."""
