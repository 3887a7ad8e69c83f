// Error checks and a device guard for the CUDA module. Errors become C++ exceptions that pybind11
// turns into Python exceptions: std::runtime_error -> RuntimeError (CUDA failures, with the CUDA
// error string), std::invalid_argument -> ValueError (arguments the kernels cannot take).
#pragma once

#ifdef DEEPRANK_CUDA_EMULATION
// CPU emulation, for tests only (never in a build): tests/ops/emulation/*_emulation_main.cuh include
// the emulator (tests/ops/emulation/cuda_emulation.cuh) before the .cu file they test.
#ifndef DEEPRANK_CUDA_EMULATOR
#error "include tests/ops/emulation/cuda_emulation.cuh before the .cu file"
#endif
#define DEEPRANK_LAUNCH(kernel, grid, threads, smem, stream) ::emu::launcher(kernel, grid, threads, smem)
#else
#include <cuda_runtime.h>
#define DEEPRANK_LAUNCH(kernel, grid, threads, smem, stream) kernel<<<grid, threads, smem, stream>>>
#endif

#include <stdexcept>
#include <string>

namespace deeprank::cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("deeprank CUDA: ") + what + ": " + cudaGetErrorString(err));
  }
}

// Checks the most recent launch without synchronising (launch-configuration errors only; faults
// inside a kernel surface at the next synchronising call, as in torch).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// Makes `device` current for the lifetime of the guard and restores the previous device after, so a
// call on tensors of cuda:1 never disturbs torch's notion of the current device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

inline int device_attribute(cudaDeviceAttr attr, int device) {
  int value = 0;
  check(cudaDeviceGetAttribute(&value, attr, device), "cudaDeviceGetAttribute");
  return value;
}

}  // namespace deeprank::cuda
