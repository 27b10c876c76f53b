"""Plotly figure builders, and `export`: the one place figures and tables are written."""
