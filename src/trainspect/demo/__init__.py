"""trainspect.demo."""
