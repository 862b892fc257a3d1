"""mixlab.mixtures"""
