"""metarun: a config-driven meta-learning and few-shot learning experiment runner."""

__version__ = "0.1.0"
