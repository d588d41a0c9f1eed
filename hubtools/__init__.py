"""hubtools: release engineering for Mistral-family models on the Hugging Face Hub."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
