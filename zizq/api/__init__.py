"""HTTP API: Falcon resources that translate requests into engine calls."""
