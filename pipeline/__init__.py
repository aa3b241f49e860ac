"""conceptprune: curate image-text datasets for CLIP-style training (see README.md)."""

from pipeline.blas_kernels import prefer_avx512

prefer_avx512()  # before numpy or faiss load OpenBLAS, which reads the choice once
