"""bort: optimal subarchitecture extraction, Agora fine-tuning and CPU serving for BERT-family encoders."""

__version__ = "0.1.0"
