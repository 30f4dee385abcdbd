// The scan's backward kernels (cuda/scan_backward.cu) compiled for the CPU emulator.
#include "scan_backward.cu"

TF_EMULATOR_ENTRY(scan_backward, TfScanBackwardParams)
