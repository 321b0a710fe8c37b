"""The ONNX runtime library the stages share: one export-and-quantise recipe and one session setup.

- :mod:`runtime.recipe`: a Hugging Face sequence classifier -> ONNX fp32 (Optimum) -> optional
  graph optimisation -> dynamic int8; random-weight classifiers at any shape. ``bort export``, the
  search's latency and the load test's architecture-only models all use it.
- :mod:`runtime.session`: the onnxruntime session options and session every ONNX model runs with.
  It imports nothing heavy, so the Bento (serve/predictor.py) carries it.

A library: it imports only the core (``bort``), never a stage.
"""
