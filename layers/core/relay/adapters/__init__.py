"""Adapters: the relay's edges (AWS, HTTP, Genesys Cloud). Logic calls these; they call nothing above."""
