"""Operator tools beside the service: dead-letter inspect and re-drive, a local development
broker."""
