"""Flower over the broker, behind basic auth (pex `monitor`)."""
