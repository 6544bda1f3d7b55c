"""Shared helpers of the steps: command line and configuration (cli), cache keys and atomic writes (cache),
where each output lives and what keys it (outputs), classifier metrics (evaluation)."""
