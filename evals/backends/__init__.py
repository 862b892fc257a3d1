"""mixlab.evals.backends"""
