"""mixlab.evals.tasks"""
