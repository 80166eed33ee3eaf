"""Media in and out: video probing and scene cuts, muxing audio onto video, VLM sound captions."""
