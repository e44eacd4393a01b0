"""Templates and guest scripts rendered into cloud-init user-data."""
