"""Gates: the Great Expectations suites of every stage (the model gate included) and the
validation that runs them and writes the readable report."""
