"""A module that fails while it is imported (a middleware or scheduled job
path pointing here must stop the worker from starting, with the error)."""

raise RuntimeError("this module is broken on purpose")
