"""trainspect.diagnosis."""
