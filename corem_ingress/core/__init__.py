"""The pure core: no sockets, no Redis, no event loop. Adapters and the store call into it."""
