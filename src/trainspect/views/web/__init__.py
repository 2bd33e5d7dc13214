"""The live web dashboard (``trainspect serve``): a standard-library HTTP server and a static page."""

from trainspect.views.web.server import Dashboard, DashboardServer, Forbidden, safe_join

__all__ = ["Dashboard", "DashboardServer", "Forbidden", "safe_join"]
