// Empty for the CPU emulator: emulator/cuda.h defines the 16-bit types the kernels use.
#pragma once
