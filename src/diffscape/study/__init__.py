"""Studies: what the demo and sweeps run (docs/architecture.md says which module does what).

Nothing is imported here: ``diffscape sweep --list`` and the report load without torch.
"""
