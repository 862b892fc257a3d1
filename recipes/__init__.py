"""mixlab.recipes"""
