// What the CPU kernels in mega_fairseq/csrc share: how a kernel is compiled for the machine it
// runs on, and forced inlining.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// one copy of each kernel for AVX2 + FMA machines and one for any x86-64, picked when loaded
#define MEGA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MEGA_CLONES
#endif
#define MEGA_INLINE inline __attribute__((always_inline))
