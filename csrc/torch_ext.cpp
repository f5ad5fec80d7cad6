// What sympathy needs from libtorch that the tch crate does not bind: two switches with
// a C interface, compiled by build.rs against the headers of the libtorch we link.
// src/torch_ext.rs documents why each one exists.

#include <ATen/Context.h>
#include <c10/core/InferenceMode.h>

extern "C" {

// Enters c10::InferenceMode on the calling thread; the guard lives on the heap until
// sympathy_inference_mode_exit hands it back (on the same thread).
void* sympathy_inference_mode_enter() { return new c10::InferenceMode(true); }

void sympathy_inference_mode_exit(void* guard) {
  delete static_cast<c10::InferenceMode*>(guard);
}

// torch.backends.mkldnn.enabled = enabled
void sympathy_set_mkldnn_enabled(bool enabled) {
  at::globalContext().setUserEnabledMkldnn(enabled);
}

// torch.backends.mkldnn.enabled
bool sympathy_mkldnn_enabled() { return at::globalContext().userEnabledMkldnn(); }

}  // extern "C"
