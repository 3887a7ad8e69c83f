// A small persistent thread pool (no OpenMP: torch ships its own OpenMP runtime, and two runtimes in
// one process oversubscribe the cores). Idle workers block on a condition variable, never spin.
#pragma once

#include <cstdint>
#include <functional>

namespace deeprank {

// Threads used by parallel_run/parallel_for. Defaults to DEEPRANK_NUM_THREADS, else OMP_NUM_THREADS,
// else the number of CPUs this process may run on.
int get_num_threads();
// n >= 1; throws std::invalid_argument otherwise.
void set_num_threads(int n);

// Runs fn(worker, workers) once on each of `workers` threads (the caller is worker 0) and returns when
// all have finished. workers <= 0 means get_num_threads(). Nested calls, and calls made while another
// thread's job holds the pool, run inline with workers == 1; fn must use the `workers` it is given.
// The first exception thrown by any worker is rethrown in the caller.
void parallel_run(int workers, const std::function<void(int worker, int workers)>& fn);

// Splits [0, n) into chunks of at least `grain` items, handed out dynamically; fn(begin, end).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t begin, int64_t end)>& fn,
                  int workers = 0);

}  // namespace deeprank
