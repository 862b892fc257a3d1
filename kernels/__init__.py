"""mixlab.kernels"""
