// The spmm kernels (cuda/spmm.cu) compiled for the CPU emulator.
#include "spmm.cu"

TF_EMULATOR_ENTRY(spmm, TfSpmmParams)
