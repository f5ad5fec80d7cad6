// sympathy's way into libtorch's c10d with Gloo, the CPU backend of PyTorch's
// DistributedDataParallel: a TCPStore for the rendezvous, a ProcessGroupGloo for the
// collectives. The operations are in c10d_ops.h (shared with the NCCL library); this
// file creates the group. Built by build.rs with -DUSE_C10D_GLOO against the gloo
// headers vendored in third_party/gloo (the commit torch 2.13.0 was built with); gloo
// itself is already inside libtorch_cpu.so.

#include "c10d_ops.h"

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

extern "C" {

// Joins the group of `world_size` ranks as `rank`: meets the others through the store
// at master_addr:master_port (served here, on `listen_fd`, unless that is -1), then
// connects to every rank over TCP from `bind_host` (an address this machine has; the
// others connect to it), or from the interface in `interface` when that is not empty. `timeout_ms`
// bounds the rendezvous and every collective. Null on error.
sympathy_c10d::Group* sympathy_c10d_new_gloo(const char* master_addr, int master_port,
                                             int rank, int world_size, int listen_fd,
                                             const char* bind_host, const char* interface,
                                             int64_t timeout_ms) {
  return sympathy_c10d::guarded<sympathy_c10d::Group*>(nullptr, [&] {
    auto store = sympathy_c10d::connect_store(master_addr, master_port, world_size,
                                              listen_fd, timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    opts->devices.push_back(
        std::string(interface).empty()
            ? c10d::ProcessGroupGloo::createDeviceForHostname(bind_host)
            : c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    opts->threads = 1;  // one collective at a time: the training loop waits on each
    auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world_size, opts);
    return new sympathy_c10d::Group{store, backend};
  });
}

}  // extern "C"
