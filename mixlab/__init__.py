"""mixlab: a post-training data-mixture lab for Kimi Linear-style hybrid LLMs."""

__version__ = "0.1.0"
