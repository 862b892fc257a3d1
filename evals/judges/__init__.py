"""mixlab.evals.judges"""
