"""Domain-level agents: the orchestrators that compose operational agents."""
