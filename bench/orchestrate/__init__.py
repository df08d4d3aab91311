"""What runs many cases: the plan of a suite, the sweep, paired rounds (bench ab and
variants against their references), the max-batch search and hyperparameter tuning. Every
worker is started through a launcher (bench.launch)."""
