"""Labelling and describing tracks; for now the template describer in English and Chinese."""

from pipeline.fusion.describe import LANGUAGES, Describer, TemplateDescriber

__all__ = ["LANGUAGES", "Describer", "TemplateDescriber"]
