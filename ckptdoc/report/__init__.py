"""Output formats. Each module renders an AuditReport and knows nothing about checkpoints."""
