"""Stand-in for datasets on the GPU benchmark machine: f5-tts's dataset module imports these names at
module level; inference never calls them."""

Dataset = load_from_disk = None
