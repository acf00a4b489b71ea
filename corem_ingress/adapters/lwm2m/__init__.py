"""LwM2M server side, sans-I/O: link format, registration, content formats, operations."""
