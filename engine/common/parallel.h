#pragma once
// A parallel loop for our CPU kernels (the streaming linear kernel, the paged decode attention).
//
// Why not at::parallel_for: in the torch wheel it is an inline OpenMP loop, and libgomp stops its
// idle workers spinning once the threads it manages exceed the CPUs, which a pool started by the
// engine thread does on small machines. Every parallel region then pays a futex wake-up (~75 us on
// the 2-core development machine, bench/results/linear.md), and a decode step is a few hundred small
// regions. This pool's workers spin between the regions of a step and sleep only after
// `kSpinMicros` without work, so a region costs about a cache-line handshake.
//
// Chunks are taken dynamically, and a region never waits for a worker that has not started it: the
// caller withdraws such offers once it runs out of chunks, and yields its core while it waits for a
// helper still in a chunk. With another process busy on one of 2 cores, waiting for every worker
// made each region wait for a descheduled one, and decode fell to ~1 token/s
// (bench/results/contention.md).
//
// As at::parallel_for, the range is cut into min(threads, ceil(range / grain)) contiguous chunks of
// equal size (the last one shorter); the caller must make what a chunk computes independent of how
// the range is cut, as our kernels do (one fixed order per output element). One caller
// at a time uses the workers; a nested call, or a call while another thread holds the pool, runs on
// the calling thread alone.
#include <cstdint>
#include <functional>

namespace asl {

// Runs fn(chunk_begin, chunk_end) over [begin, end) on up to `threads` threads (the caller and
// threads - 1 pool workers). Rethrows the first exception a chunk threw, after all chunks finish.
void ParallelFor(int threads, int64_t begin, int64_t end, int64_t grain,
                 const std::function<void(int64_t, int64_t)>& fn);

}  // namespace asl
