// What the CPU kernels in mega_fairseq/csrc share: how a kernel is compiled for the machine it
// runs on, and forced inlining.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// one copy of each kernel for AVX2 + FMA machines and one for any x86-64, picked when loaded
#define MEGA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
// the same plus a copy for AVX-512 machines (x86-64-v4), for the element-wise gate kernels: their
// sigmoid's polynomial runs on twice the lanes. Measured in the layer (d=512, h=1024, 8192 tokens,
// 1 thread): 61.5 -> 58.7 ms a step for all of them. Not for the EMA recurrence: its forward
// measured slower with AVX-512, and its backward has a MEGA_WIDE copy with blocks of 16 floats
// (ema_recurrence.cpp), which a clone of the AVX2 code (blocks of 8) would not give.
#define MEGA_CLONES_AVX512 __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
// a kernel compiled for AVX-512 machines only, beside a MEGA_CLONES one of other vector sizes: the
// caller picks it at run time where MEGA_HAS_WIDE()
#define MEGA_WIDE __attribute__((target("arch=x86-64-v4")))
#define MEGA_HAS_WIDE() __builtin_cpu_supports("x86-64-v4")
#else
#define MEGA_CLONES
#define MEGA_CLONES_AVX512
#endif
#define MEGA_INLINE inline __attribute__((always_inline))
