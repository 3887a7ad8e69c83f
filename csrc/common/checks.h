// Precondition guards at the binding boundary. Every array enters the extension through the buffer
// protocol and is checked here (element type, rank, C-contiguity) before the kernels read or write it
// through a raw pointer, so a direct call of deeprank._C with a bad array raises instead of touching
// memory it does not own. Messages name the argument and what was expected, e.g. "queries must be a
// 2-D float32 array, got 3-D float64". The user-facing checks of the public API are in Python
// (deeprank/ops/checks.py and the op modules), which validate and convert before calling here.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>

namespace deeprank {
namespace py = pybind11;

// "float32", "float64", "int64", ... for a buffer format character.
std::string format_name(const std::string& format, py::ssize_t itemsize);
// "3-D float64"
std::string describe(const py::buffer_info& info);

template <class T>
const char* dtype_name() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else if constexpr (std::is_same_v<T, int64_t>) return "int64";
  else if constexpr (std::is_same_v<T, int32_t>) return "int32";
  else return "?";
}

// True for a float32 buffer, false for float64; TypeError naming `name` for anything else. Lets a
// binding pick the float or double instantiation of a kernel template.
bool is_float32_array(py::handle obj, const char* name);

// Requests the buffer of `obj` and checks its element type (TypeError), dimensionality (ValueError)
// and C-contiguity (ValueError). ndim < 0 accepts any dimensionality.
template <class T>
py::buffer_info require_array(py::handle obj, const char* name, int ndim, bool writable = false) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be an array supporting the buffer protocol, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request(writable);
  const bool dtype_ok = info.itemsize == static_cast<py::ssize_t>(sizeof(T)) &&
                        info.format == py::format_descriptor<T>::format();
  const std::string want_dims = ndim >= 0 ? std::to_string(ndim) + "-D " : std::string();
  if (!dtype_ok || (ndim >= 0 && info.ndim != ndim)) {
    std::string msg = std::string(name) + " must be a " + want_dims + dtype_name<T>() + " array, got " + describe(info);
    if (!dtype_ok) throw py::type_error(msg);
    throw py::value_error(msg);
  }
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expected) {
      throw py::value_error(std::string(name) + " must be C-contiguous (row-major); pass a contiguous copy");
    }
    expected *= info.shape[d];
  }
  return info;
}

}  // namespace deeprank
