"""hlimage: build Xen boot media from one description."""

__version__ = "0.1.0"
