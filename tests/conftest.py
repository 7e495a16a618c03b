import os

# Keep BLAS single-threaded in tests (and in every subprocess they start): ranks
# oversubscribe the two cores otherwise. OPENBLAS_CORETYPE is left as it is.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
