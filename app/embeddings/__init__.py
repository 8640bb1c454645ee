"""``/v1/embeddings``: settings, request bounds and the wire format of vectors."""
