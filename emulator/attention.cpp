// The attention kernels (cuda/attention.cu) compiled for the CPU emulator.
#include "attention.cu"

TF_EMULATOR_ENTRY(attention, TfAttentionParams)
