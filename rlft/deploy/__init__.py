"""Deployment: ``rlft export`` writes a policy as ONNX programs plus a JSON spec (``rlft.deploy.export``), and
``PolicyRunner`` runs such an artifact step by step with numpy and ONNX Runtime only (``rlft.deploy.runner``)."""

from rlft.deploy.runner import PolicyRunner, read_spec

__all__ = ["PolicyRunner", "read_spec"]
