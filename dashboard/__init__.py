"""mixlab.dashboard"""
