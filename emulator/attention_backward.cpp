// The attention backward kernels (cuda/attention_backward.cu) compiled for the CPU emulator.
#include "attention_backward.cu"

TF_EMULATOR_ENTRY(attention_backward, TfAttentionBackwardParams)
