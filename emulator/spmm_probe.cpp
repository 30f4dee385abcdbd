// The spmm probes (cuda/spmm_probe.cu) compiled for the CPU emulator.
#include "spmm_probe.cu"

TF_EMULATOR_ENTRY(spmm_probe, TfSpmmParams)
