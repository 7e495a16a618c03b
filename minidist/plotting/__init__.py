"""Figures. Only this package imports matplotlib (with the Agg backend)."""
