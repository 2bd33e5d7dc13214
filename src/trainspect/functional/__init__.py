"""trainspect.functional."""
