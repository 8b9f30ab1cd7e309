"""One module per system under test, all with the interface of ``base.System``."""
