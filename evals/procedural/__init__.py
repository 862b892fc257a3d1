"""mixlab.evals.procedural"""
