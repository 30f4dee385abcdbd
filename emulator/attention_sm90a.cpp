// The Hopper attention kernels (cuda/attention_sm90a.cu) compiled for the CPU emulator.
#include "attention_sm90a.cu"

TF_EMULATOR_ENTRY(attention_sm90a, TfAttentionSm90aParams)
