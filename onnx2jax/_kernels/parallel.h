// Splitting a kernel's work over XLA's intra-op threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace onnx2jax {

#ifdef ONNX2JAX_CALL_LOG
// Developer builds only (benchmarks/tools/kernel_calls.py compiles with -DONNX2JAX_CALL_LOG):
// each ParallelFor call's duration and its pool task's start delay, in call order, read back
// through onnx2jax_call_log. jax.profiler's thunk times inflate these multi-threaded calls
// (NOTES entry 28); this is the wall clock inside them.
struct CallLog {
  static constexpr int64_t kCap = 1 << 20;
  std::atomic<int64_t> calls{0}, starts{0};
  int64_t duration_ns[kCap], delay_ns[kCap];
};
inline CallLog& Log() {
  static CallLog* log = new CallLog();
  return *log;
}
inline int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
#endif

constexpr int64_t kChunksPerThread = 4;  // evens out the tail with little traffic on the counter
constexpr std::chrono::microseconds kPollBeforeSleep{100};

// Runs body(begin, end) over chunks of [0, total) on the calling thread and threads - 1 tasks of
// XLA's pool, about kChunksPerThread chunks per thread. The caller then waits for the other
// threads' chunks: it polls for up to kPollBeforeSleep, yielding its core, and then sleeps (an
// unbounded spin burns a core of a 2-core machine; sleeping at once pays a wake-up per call:
// NOTES entries 19, 22; our own spinning helpers instead of XLA's pool did not pay: 28). The state
// is shared because a pool task may start after the call has returned; it then finds no chunk
// left and runs nothing.
inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t threads, int64_t total,
                        std::function<void(int64_t, int64_t)> body) {
#ifdef ONNX2JAX_CALL_LOG
  struct Timed {
    int64_t t0 = NowNs();
    ~Timed() {
      const int64_t i = Log().calls++;
      if (i < CallLog::kCap) Log().duration_ns[i] = NowNs() - t0;
    }
  } timed;
  const int64_t scheduled = timed.t0;
#endif
  if (threads <= 1 || total <= 1) {
    if (total > 0) body(0, total);
    return;
  }
  struct State {
    std::function<void(int64_t, int64_t)> body;
    int64_t total, chunk;
    std::atomic<int64_t> next{0};
    int64_t done = 0;  // guarded by mu
    std::mutex mu;
    std::condition_variable all_done;

    void Drain() {
      int64_t mine = 0;
      for (;;) {
        const int64_t q0 = next.fetch_add(1, std::memory_order_relaxed) * chunk;
        if (q0 >= total) break;
        const int64_t q1 = std::min(total, q0 + chunk);
        body(q0, q1);
        mine += q1 - q0;
      }
      if (mine == 0) return;
      std::lock_guard<std::mutex> lock(mu);
      done += mine;
      if (done == total) all_done.notify_all();
    }
  };
  auto state = std::make_shared<State>();
  state->body = std::move(body);
  state->total = total;
  state->chunk = std::max<int64_t>(1, total / (kChunksPerThread * threads));
  for (int64_t t = 1; t < threads && t * state->chunk < total; ++t) {
#ifdef ONNX2JAX_CALL_LOG
    pool.Schedule([state, scheduled] {
      const int64_t i = Log().starts++;
      if (i < CallLog::kCap) Log().delay_ns[i] = NowNs() - scheduled;
      state->Drain();
    });
#else
    pool.Schedule([state] { state->Drain(); });
#endif
  }
  state->Drain();
  const auto give_up = std::chrono::steady_clock::now() + kPollBeforeSleep;
  do {
    {
      std::lock_guard<std::mutex> lock(state->mu);
      if (state->done == state->total) return;
    }
    std::this_thread::yield();
  } while (std::chrono::steady_clock::now() < give_up);
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] { return state->done == state->total; });
}

}  // namespace onnx2jax
