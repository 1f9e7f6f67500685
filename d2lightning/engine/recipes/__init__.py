"""The recipes that compose the engine into a run: ``DefaultTrainer``, the LazyConfig recipe, the signal hooks,
output folders, startup checks, the config's ``LIGHTNING`` section, ``default_writers`` and ``DefaultPredictor``."""
