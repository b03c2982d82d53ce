// What the CPU kernels in mega_fairseq/csrc share: how a kernel is compiled for the machine it
// runs on, and forced inlining.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// one copy of each kernel for AVX2 + FMA machines and one for any x86-64, picked when loaded
#define MEGA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
// the same plus a copy for AVX-512 machines (x86-64-v4), for the element-wise gate kernels: their
// sigmoid's polynomial runs on twice the lanes. Measured in the layer (d=512, h=1024, 8192 tokens,
// 1 thread): 61.5 -> 58.7 ms a step for all of them. Not for the EMA recurrence, whose forward +
// backward took 41-47 ms with AVX2 and 45-52 ms with an AVX-512 copy.
#define MEGA_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEGA_CLONES
#define MEGA_CLONES_AVX512
#endif
#define MEGA_INLINE inline __attribute__((always_inline))
