// The smoke kernel (cuda/smoke.cu) compiled for the CPU emulator.
#include "smoke.cu"

TF_EMULATOR_ENTRY(smoke, TfSmokeMmaParams)
