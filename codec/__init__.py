"""Neural image codec with real bitstreams that adapts to new image domains without forgetting.

- :mod:`codec.model`: factorized-prior codec (compressai GDN / EntropyBottleneck), checkpoints,
  import of compressai ``bmshj2018-factorized`` state_dicts.
- :mod:`codec.bitstream`: the file format (header, CRC, rANS payload), compress / decompress.
- :mod:`codec.registry`: codec kinds and adaptation strategies by name (``build_codec``).
- :mod:`codec.strategies`: naive / selective fine-tuning, CAwF, decoder adapters with a gate.
- :mod:`codec.data`, :mod:`codec.metrics`, :mod:`codec.learner` (registers ``codec.*`` learners
  and the ``domains`` task builder in :mod:`incdet.engine`), :mod:`codec.report`, :mod:`codec.cli`.
"""
from codec.model import FactorizedCodec, LAMBDAS, import_compressai, load_codec, save_checkpoint  # noqa: F401
from codec import hyperprior  # noqa: F401,E402  (registers the hyperprior codec kinds)
from codec import strategies  # noqa: F401,E402  (registers the codec kinds and strategies)
from codec import learner  # noqa: F401,E402  (registers learners / the "domains" task builder with the driver)
