// Checks and helpers shared by the ATen glue of the CUDA kernels (csrc/cuda_ops/*_op.cpp):
// devices, dtypes and supported ranges, the kernels' dtype tag, the current stream, and a
// launch error turned into a RuntimeError.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/astra_cuda.h"

namespace astra::cuda {

// The kernels' tag for t's dtype (float32, float16 or bfloat16; else an error naming `name`).
astra_dtype to_astra_dtype(const at::Tensor& t, const char* name);

void check_cuda_tensor(const at::Tensor& t, const char* name);
void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name);
// (G, K, Dg) codebooks within the supported ranges (checks::codebook_shape: the Python messages).
void check_codebooks(const at::Tensor& codebooks);
void check_int32_contiguous(const at::Tensor& t, const char* name);
void check_bits(int64_t bits);
int64_t packed_bytes(int64_t count, int64_t bits);
// A launcher's error as a RuntimeError naming the op.
void check_launch(cudaError_t err, const char* op);
// The current stream of t's device: every kernel runs there.
cudaStream_t current_stream(const at::Tensor& t);

}  // namespace astra::cuda
