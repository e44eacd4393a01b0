"""Plugins that make agent-less Neutron and Nova's fake driver usable for tests."""
