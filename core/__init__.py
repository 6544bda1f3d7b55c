"""The bottom layer every other package stands on: the error a user can fix (errors), digests of values,
files and code for cache keys (digests) and text in messages (text). It imports nothing of the project,
so `models/` and `dataset/` can use it without reaching up to `pipeline/`; atomic writes are
`pipeline/cache.py`'s."""
