"""Domain-adaptation strategies: naive / selective fine-tuning, CAwF, decoder adapters."""
STRATEGIES = ("naive", "selective", "cawf", "adapters")
