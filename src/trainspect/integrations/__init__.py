"""trainspect.integrations."""
