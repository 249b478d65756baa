"""Domain-adaptation strategies, one module each, registered in :data:`codec.registry.STRATEGIES`
(and their codec kinds in :data:`codec.registry.CODECS`): naive / selective fine-tuning, CAwF,
decoder adapters. Importing this package registers them all."""
from codec.strategies import adapters, cawf, naive, selective  # noqa: F401  (registration)
