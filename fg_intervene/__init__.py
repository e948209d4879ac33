"""Focal Guidance interventions for LayerScope (see fg_intervene.plugin)."""
