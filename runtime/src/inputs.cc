#include "inputs.h"

#include <cstring>

#include "prepack.h"

namespace qpasses {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

struct Tensor {
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;
};

Tensor describe(const Ort::ConstValue& v, const char* name) {
  if (!v) throw Error(std::string("input ") + name + " is missing");
  if (!v.IsTensor()) throw Error(std::string("input ") + name + " must be a tensor");
  auto info = v.GetTensorTypeAndShapeInfo();
  return {info.GetElementType(), info.GetShape()};
}

void expect(const Ort::ConstValue& v, const char* name, ONNXTensorElementDataType type, const char* type_name,
            const std::vector<int64_t>& shape) {
  const Tensor t = describe(v, name);
  if (t.type != type) throw Error(std::string("input ") + name + " must be " + type_name);
  if (t.shape != shape)
    throw Error(std::string("input ") + name + " has shape " + shape_str(t.shape) + ", expected " + shape_str(shape));
}

constexpr auto kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kF32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kF16 = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;

std::vector<float> to_float(const Ort::ConstValue& v, size_t n) {
  std::vector<float> out(n);
  if (v.GetTensorTypeAndShapeInfo().GetElementType() == kF32) {
    std::memcpy(out.data(), v.GetTensorData<float>(), n * 4);
  } else {
    const Ort::Float16_t* h = v.GetTensorData<Ort::Float16_t>();
    for (size_t i = 0; i < n; ++i) out[i] = h[i].ToFloat();
  }
  return out;
}

// [rank, N] row-major -> [ceil(N / kPanel)][rank][kPanel], zero padded (fp16 0x0000 is +0 too).
template <typename T>
std::vector<T> pack_panels(const T* r, int64_t rank, int64_t N) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  std::vector<T> out(size_t(panels * rank * kPanel), T(0));
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t j = 0; j < rank; ++j)
      for (int64_t c = 0; c < kPanel && p * kPanel + c < N; ++c)
        out[size_t((p * rank + j) * kPanel + c)] = r[j * N + p * kPanel + c];
  return out;
}

}  // namespace

PackedWeights pack_weights(const WeightSpec& s, const WeightInputs& in) {
  if (s.mxfp4) {
    const int64_t nb = (s.K + kBlock - 1) / kBlock;
    expect(in.B, "B", kU8, "uint8", {s.N, nb, 16});
    expect(in.S, "E", kU8, "uint8 (E8M0 codes)", {s.N, nb});
    const std::string bad = check_e8m0(in.S.GetTensorData<uint8_t>(), s.N * nb);
    if (!bad.empty()) throw Error(bad);
    return pack_mxfp4(s.K, s.N, in.B.GetTensorData<uint8_t>(), in.S.GetTensorData<uint8_t>());
  }
  const int64_t nbw = (s.K + s.block_size - 1) / s.block_size;
  expect(in.B, "B", kU8, "uint8", {s.N, nbw, (s.block_size + 1) / 2});
  const Tensor sc = describe(in.S, "scales");
  if (sc.type != kF32) throw Error("input scales must be float32");
  if (sc.shape != std::vector<int64_t>{s.N, nbw} && sc.shape != std::vector<int64_t>{s.N * nbw})
    throw Error("input scales has shape " + shape_str(sc.shape) + ", expected [" + std::to_string(s.N) + ", " +
                std::to_string(nbw) + "] or [" + std::to_string(s.N * nbw) + "]");
  const uint8_t* zp = nullptr;
  if (in.zp) {
    const Tensor z = describe(in.zp, "zero_points");
    const int64_t row = (nbw + 1) / 2;
    if (z.type != kU8) throw Error("input zero_points must be uint8 (packed 4-bit, as MatMulNBits)");
    if (z.shape != std::vector<int64_t>{s.N, row} && z.shape != std::vector<int64_t>{s.N * row})
      throw Error("input zero_points has shape " + shape_str(z.shape) + ", expected [" + std::to_string(s.N) + ", " +
                  std::to_string(row) + "]");
    zp = in.zp.GetTensorData<uint8_t>();
  }
  return pack_int4(s.K, s.N, s.block_size, in.B.GetTensorData<uint8_t>(), in.S.GetTensorData<float>(), zp);
}

LowRank make_lowrank(int64_t K, int64_t N, const Ort::ConstValue& L, const Ort::ConstValue& R) {
  const Tensor l = describe(L, "L"), r = describe(R, "R");
  if (l.type != r.type || (l.type != kF32 && l.type != kF16))
    throw Error("inputs L and R must both be float32 or both float16");
  if (l.shape.size() != 2 || l.shape[0] != K)
    throw Error("input L has shape " + shape_str(l.shape) + ", expected [K=" + std::to_string(K) + ", rank]");
  const int64_t rank = l.shape[1];
  if (r.shape != std::vector<int64_t>{rank, N})
    throw Error("input R has shape " + shape_str(r.shape) + ", expected [" + std::to_string(rank) + ", " + std::to_string(N) + "]");
  LowRank lr;
  lr.K = K;
  lr.N = N;
  lr.rank = rank;
  if (l.type == kF16) {
    const auto* lh = reinterpret_cast<const uint16_t*>(L.GetTensorData<Ort::Float16_t>());
    lr.L16.assign(lh, lh + K * rank);
    lr.R16 = pack_panels(reinterpret_cast<const uint16_t*>(R.GetTensorData<Ort::Float16_t>()), rank, N);
  } else {
    lr.L = to_float(L, size_t(K * rank));
    lr.R = pack_panels(R.GetTensorData<float>(), rank, N);
  }
  return lr;
}

std::vector<int64_t> checked_input_shape(const Ort::ConstValue& A, int64_t K) {
  const Tensor a = describe(A, "A");
  if (a.type != kF32) throw Error("input A must be float32");
  if (a.shape.empty() || a.shape.back() != K)
    throw Error("input A has shape " + shape_str(a.shape) + "; its last dimension must be K=" + std::to_string(K));
  return a.shape;
}

int64_t count_rows(const std::vector<int64_t>& shape) {
  int64_t m = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) m *= shape[i];
  return m;
}

const float* vector_input(const Ort::ConstValue& v, int64_t n, const char* name) {
  expect(v, name, kF32, "float32", {n});
  return v.GetTensorData<float>();
}

}  // namespace qpasses
