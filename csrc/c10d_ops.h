// The operations sympathy needs from a c10d process group, with a C interface: the
// part of csrc/c10d.cpp (Gloo, linked into the binary) and csrc/c10d_nccl.cpp (NCCL,
// a shared library loaded only on GPU machines) that does not depend on the backend.
// src/train/distributed.rs is the Rust side and documents the semantics.
//
// Every function catches every C++ exception and turns it into an error value: -1 or a
// null pointer, with the message in a thread-local string that
// sympathy_c10d_last_error returns. Tensors arrive as tch's `at::Tensor*` and are
// reduced in place, without copies.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace sympathy_c10d {

// The message of the last failed call on this thread.
inline std::string& last_error() {
  thread_local std::string message;
  return message;
}

// Runs `body`; on an exception, records its message (without libtorch's C++ backtrace)
// and returns `failed`.
template <typename T, typename F>
T guarded(T failed, F body) {
  try {
    return body();
  } catch (const c10::Error& e) {
    last_error() = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error() = e.what();
  } catch (...) {
    last_error() = "unknown C++ exception";
  }
  return failed;
}

// A process group and the store its ranks met through.
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

// c10d logs each connection retry and timeout to stderr, with C++ backtraces, before
// it throws the same message, which we report as one line. Only its fatal messages
// stay, unless the user asks for more with TORCH_CPP_LOG_LEVEL (as with PyTorch).
inline void quiet_logs() {
  if (std::getenv("TORCH_CPP_LOG_LEVEL") != nullptr) {
    c10::initLogging();
  } else {
    FLAGS_caffe2_log_level = 3;  // FATAL
  }
}

// The rendezvous store: a TCPStore at master_addr:master_port, served by this process
// on `listen_fd` (a socket the caller bound and listens on) when that is not -1 (rank 0
// under `--nproc`), and reached as a client otherwise (every rank under torchrun, whose
// agent serves it). Keys live under "sympathy/", clear of the launcher's own.
inline c10::intrusive_ptr<c10d::Store> connect_store(const char* master_addr,
                                                      int master_port,
                                                      int world_size,
                                                      int listen_fd,
                                                      int64_t timeout_ms) {
  quiet_logs();
  c10d::TCPStoreOptions opts;
  opts.port = static_cast<std::uint16_t>(master_port);
  const bool host_store = listen_fd >= 0;
  opts.isServer = host_store;
  if (host_store) {
    // The store serves on the caller's socket (bound to the master address only),
    // instead of binding every interface itself; it closes the socket when done.
    opts.masterListenFd = listen_fd;
  }
  opts.numWorkers = static_cast<std::size_t>(world_size);
  // Every rank counts itself in; the one hosting the store waits for all of them.
  opts.waitWorkers = true;
  opts.timeout = std::chrono::milliseconds(timeout_ms);
  auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), opts);
  return c10::make_intrusive<c10d::PrefixStore>("sympathy/", tcp);
}

// Waits for `work`, which throws if the collective failed.
inline int finish(const c10::intrusive_ptr<c10d::Work>& work) {
  work->wait();
  return 0;
}

inline c10d::ReduceOp reduce_op(int op) {
  switch (op) {
    case 0:
      return c10d::ReduceOp(c10d::ReduceOp::SUM);
    case 1:
      return c10d::ReduceOp(c10d::ReduceOp::AVG);
    case 2:
      return c10d::ReduceOp(c10d::ReduceOp::MAX);
    default:
      TORCH_CHECK(false, "unknown reduce op ", op);
  }
}

}  // namespace sympathy_c10d

extern "C" {

// The message of the last call that failed on this thread (empty if none did); valid
// until the next failing call on the same thread.
const char* sympathy_c10d_last_error() {
  return sympathy_c10d::last_error().c_str();
}

// In place, on every rank: `tensor` becomes the sum (op 0), mean (1) or maximum (2)
// of every rank's `tensor`. 0 on success, -1 on error.
int sympathy_c10d_allreduce(sympathy_c10d::Group* group, at::Tensor* tensor, int op) {
  return sympathy_c10d::guarded(-1, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = sympathy_c10d::reduce_op(op);
    return sympathy_c10d::finish(group->backend->allreduce(tensors, opts));
  });
}

// In place, on every rank: `tensor` becomes rank `root`'s `tensor`.
int sympathy_c10d_broadcast(sympathy_c10d::Group* group, at::Tensor* tensor, int root) {
  return sympathy_c10d::guarded(-1, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    return sympathy_c10d::finish(group->backend->broadcast(tensors, opts));
  });
}

// Returns once every rank has called it.
int sympathy_c10d_barrier(sympathy_c10d::Group* group) {
  return sympathy_c10d::guarded(-1, [&] {
    return sympathy_c10d::finish(group->backend->barrier());
  });
}

int sympathy_c10d_rank(const sympathy_c10d::Group* group) {
  return group->backend->getRank();
}

int sympathy_c10d_world_size(const sympathy_c10d::Group* group) {
  return group->backend->getSize();
}

// Writes `value` under `key` in the store (for the ranks' process ids).
int sympathy_c10d_store_set(sympathy_c10d::Group* group, const char* key, const char* value) {
  return sympathy_c10d::guarded(-1, [&] {
    std::string v(value);
    group->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    return 0;
  });
}

// Reads `key`, waiting for it, into `out` (at most `cap` bytes, NUL-terminated);
// returns the value's length, or -1 on error.
int64_t sympathy_c10d_store_get(sympathy_c10d::Group* group, const char* key, char* out,
                                int64_t cap) {
  return sympathy_c10d::guarded<int64_t>(-1, [&] {
    auto v = group->store->get(key);
    TORCH_CHECK(static_cast<int64_t>(v.size()) < cap, "value of ", key, " too long");
    std::copy(v.begin(), v.end(), out);
    out[v.size()] = '\0';
    return static_cast<int64_t>(v.size());
  });
}

// Leaves the group: the backend, then the store (the one hosting it closes it).
void sympathy_c10d_free(sympathy_c10d::Group* group) {
  sympathy_c10d::guarded(0, [&] {
    delete group;
    return 0;
  });
}

}  // extern "C"
