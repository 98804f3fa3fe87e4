"""servesim: predict LLM-serving scheduling policies on real GPUs."""

__version__ = "0.1.0"
