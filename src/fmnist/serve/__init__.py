"""Serving a trained run: the FastAPI app (`app.py`), its limits (`limits.py`) and the web page (`static/`).

Install with the `serve` extra (`pip install .[serve]`). Choose the Keras
backend (`fmnist.models.select_backend`) before importing `fmnist.serve.app`.
"""
