"""The I/O plumbing every output shares: atomic and durable outputs, the streaming copy with
its digests, the progress bar and the messages on stderr. Nothing here knows a format."""
