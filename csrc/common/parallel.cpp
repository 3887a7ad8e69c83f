#include "common/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

namespace deeprank {
namespace {

thread_local bool t_inside_job = false;

int default_threads() {
  for (const char* var : {"DEEPRANK_NUM_THREADS", "OMP_NUM_THREADS"}) {
    if (const char* env = std::getenv(var)) {
      const int n = std::atoi(env);
      if (n >= 1) return n;
    }
  }
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n >= 1) return n;
  }
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

std::atomic<int>& thread_setting() {
  static std::atomic<int> n{default_threads()};
  return n;
}

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : threads_) t.join();
  }

  void run(int workers, const std::function<void(int, int)>& fn) {
    std::unique_lock<std::mutex> submit(submit_m_, std::try_to_lock);
    if (!submit.owns_lock()) {
      // Another Python thread's job holds the pool: run inline rather than queue behind it.
      fn(0, 1);
      return;
    }
    grow(workers - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      job_ = &fn;
      job_workers_ = workers;
      pending_ = workers - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_work_.notify_all();
    std::exception_ptr mine;
    t_inside_job = true;
    try {
      fn(0, workers);
    } catch (...) {
      mine = std::current_exception();
    }
    t_inside_job = false;
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
    std::exception_ptr err = mine ? mine : error_;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

 private:
  void grow(int helpers) {
    while (static_cast<int>(threads_.size()) < helpers) {
      const int index = static_cast<int>(threads_.size()) + 1;
      threads_.emplace_back([this, index] { loop(index); });
    }
  }

  void loop(int index) {
    t_inside_job = true;  // work inside a job never fans out again
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_work_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (index >= job_workers_) continue;
      const auto* job = job_;
      const int workers = job_workers_;
      lk.unlock();
      std::exception_ptr err;
      try {
        (*job)(index, workers);
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      if (err && !error_) error_ = err;
      if (--pending_ == 0) cv_done_.notify_all();
    }
  }

  std::mutex submit_m_;
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> threads_;
  const std::function<void(int, int)>* job_ = nullptr;
  int job_workers_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

Pool* g_pool = nullptr;
std::once_flag g_atfork_once;

Pool& pool() {
  std::call_once(g_atfork_once, [] {
    // The child of a fork has none of the parent's worker threads: forget the pool (leak it, its
    // mutexes may be held) and build a fresh one on first use.
    pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
  });
  static std::mutex create_m;
  std::lock_guard<std::mutex> lk(create_m);
  if (g_pool == nullptr) g_pool = new Pool();  // never destroyed: workers may outlive static teardown
  return *g_pool;
}

}  // namespace

int get_num_threads() { return thread_setting().load(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("threads must be >= 1, got " + std::to_string(n));
  thread_setting().store(n);
}

void parallel_run(int workers, const std::function<void(int, int)>& fn) {
  if (workers <= 0) workers = get_num_threads();
  if (workers == 1 || t_inside_job) {
    fn(0, 1);
    return;
  }
  pool().run(workers, fn);
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn, int workers) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers <= 0) workers = get_num_threads();
  const int64_t chunks = (n + grain - 1) / grain;
  workers = static_cast<int>(std::min<int64_t>(workers, chunks));
  if (workers <= 1 || t_inside_job) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  parallel_run(workers, [&](int, int) {
    for (;;) {
      const int64_t chunk = next.fetch_add(1, std::memory_order_relaxed);
      if (chunk >= chunks) return;
      const int64_t begin = chunk * grain;
      fn(begin, std::min(n, begin + grain));
    }
  });
}

}  // namespace deeprank
