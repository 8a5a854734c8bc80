"""Triton kernels of the pixelwise MLP (installed as ``asapnet_triton.kernels``)."""
