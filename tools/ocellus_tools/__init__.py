"""ocellus-tools: offline tools that build the model bundles the ocellus runtime reads (docs/manifest.md)."""

__version__ = "0.1.0"
