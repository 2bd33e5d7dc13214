"""trainspect.views."""
