"""The steps' plumbing: configuration and the command line, storage and atomic writes, output paths and
their keys, the readers of upstream outputs, feature caches, the forward pass and torchrun's ranks, the
machine's limits and the guard a step imports first. Each module opens with a docstring saying what it
holds; the formulas live in `mammi/`, not here."""
