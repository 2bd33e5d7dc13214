"""trainspect.engine."""
