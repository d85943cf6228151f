"""The thin HTTP layer: one module per resource."""
