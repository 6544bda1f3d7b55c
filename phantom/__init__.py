"""The demo world: synthetic radiographs with known findings (world) and the trainer of its two models (train)."""
