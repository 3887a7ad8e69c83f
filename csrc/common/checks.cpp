#include "common/checks.h"

namespace deeprank {

std::string format_name(const std::string& format, py::ssize_t itemsize) {
  const char c = format.empty() ? '?' : format.back();  // skip byte-order prefixes such as '<'
  switch (c) {
    case 'f': return itemsize == 4 ? "float32" : "float" + std::to_string(8 * itemsize);
    case 'd': return "float64";
    case 'e': return "float16";
    case 'b': case 'h': case 'i': case 'l': case 'q':
      return "int" + std::to_string(8 * itemsize);
    case 'B': case 'H': case 'I': case 'L': case 'Q':
      return "uint" + std::to_string(8 * itemsize);
    case '?': return "bool";
    default: return "'" + format + "'";
  }
}

std::string describe(const py::buffer_info& info) {
  return std::to_string(info.ndim) + "-D " + format_name(info.format, info.itemsize);
}

bool is_float32_array(py::handle obj, const char* name) {
  if (!PyObject_CheckBuffer(obj.ptr())) {
    throw py::type_error(std::string(name) + " must be a float32 or float64 array, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  }
  const py::buffer_info info = py::reinterpret_borrow<py::buffer>(obj).request();
  if (info.itemsize == 4 && info.format == py::format_descriptor<float>::format()) return true;
  if (info.itemsize == 8 && info.format == py::format_descriptor<double>::format()) return false;
  throw py::type_error(std::string(name) + " must be a float32 or float64 array, got " + describe(info));
}

}  // namespace deeprank
