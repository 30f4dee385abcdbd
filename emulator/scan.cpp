// The scan kernels (cuda/scan.cu) compiled for the CPU emulator.
#include "scan.cu"

TF_EMULATOR_ENTRY(scan, TfScanParams)
