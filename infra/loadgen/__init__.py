"""`keel loadgen`: a realistic trader mix driving the real gateway (see population.py)."""
