// The bitmap spmm probes (cuda/spmm_bitmap_probe.cu) compiled for the CPU emulator.
#include "spmm_bitmap_probe.cu"

TF_EMULATOR_ENTRY(spmm_bitmap_probe, TfSpmmBitmapParams)
