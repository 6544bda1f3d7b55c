"""The bottom layer every other package stands on: errors, digests and atomic writes. It imports
nothing of the project, so `models/` and `dataset/` can use it without reaching up to `pipeline/`."""
