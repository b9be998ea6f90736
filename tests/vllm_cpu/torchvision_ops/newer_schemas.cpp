// Operators that the newer torchvision Python code (the wheel's, kept in place) registers
// fake/meta kernels for at import time, but that the 0.14.1 C++ sources do not declare.
// Declaring the schemas lets `import torchvision` succeed; neither vLLM nor transformers calls
// these ops, so the kernels only raise a clear error.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

[[noreturn]] void not_built(const char* op) {
  TORCH_CHECK(false, "torchvision::", op, " is not part of this CPU build of torchvision's operators");
}

at::Tensor qnms(const at::Tensor&, const at::Tensor&, double) { not_built("qnms"); }

at::Tensor qroi_align(const at::Tensor&, const at::Tensor&, double, int64_t, double, int64_t, double,
                      int64_t, int64_t, int64_t, bool) {
  not_built("qroi_align");
}

at::Tensor box_iou_rotated(const at::Tensor&, const at::Tensor&) { not_built("box_iou_rotated"); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(torchvision, m) {
  m.def("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor");
  m.def(
      "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
      "float rois_scale, int rois_zero_point, float spatial_scale, int pooled_height, "
      "int pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def("box_iou_rotated(Tensor boxes1, Tensor boxes2) -> Tensor");
}

TORCH_LIBRARY_IMPL(torchvision, CompositeExplicitAutograd, m) {
  m.impl("qnms", &qnms);
  m.impl("qroi_align", &qroi_align);
  m.impl("box_iou_rotated", &box_iou_rotated);
}
