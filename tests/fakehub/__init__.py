"""A local, protocol-faithful Hugging Face Hub for tests: `FakeHub` (server.py) and its endpoints (routes.py)."""

from tests.fakehub.server import FakeHub, Fault

__all__ = ["FakeHub", "Fault"]
