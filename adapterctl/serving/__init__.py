"""Serving: the runtime that hot-swaps adapters, and the HTTP server around it."""
