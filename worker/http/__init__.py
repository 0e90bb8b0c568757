"""The HTTP front doors: health and metrics, and the Perspective-compatible API."""
