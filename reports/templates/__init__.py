"""Jinja2 templates of LayerScope reports (shipped as ``layerscope.report_templates``)."""
