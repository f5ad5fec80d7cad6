// c10d with NCCL, the GPU backend of PyTorch's DistributedDataParallel: the same
// operations as csrc/c10d.cpp (c10d_ops.h) over a ProcessGroupNCCL. Built by build.rs
// as a shared library of its own, only where the CUDA and NCCL headers are present,
// and loaded (dlopen) only when training on GPUs, so CPU builds never need CUDA.

#include "c10d_ops.h"

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

extern "C" {

// As sympathy_c10d_new_gloo; NCCL finds its own network path between the GPUs, so the
// bind address and interface are not used (NCCL_SOCKET_IFNAME steers it).
sympathy_c10d::Group* sympathy_c10d_new_nccl(const char* master_addr, int master_port,
                                             int rank, int world_size, int listen_fd,
                                             const char* /*bind_host*/,
                                             const char* /*interface*/, int64_t timeout_ms) {
  return sympathy_c10d::guarded<sympathy_c10d::Group*>(nullptr, [&] {
    auto store = sympathy_c10d::connect_store(master_addr, master_port, world_size,
                                              listen_fd, timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world_size, opts);
    return new sympathy_c10d::Group{store, backend};
  });
}

}  // extern "C"
