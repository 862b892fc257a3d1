"""mixlab.evals"""
