"""Redis: the key schema, registry writes, resolver reads, the revocation bus and uplink streams."""
