"""mteb-midlayer: evaluate and use the intermediate layers of text encoders and LLMs on MTEB."""

__version__ = "0.1.0"
