// ONNX Runtime glue: the ops MatMulMXFP4 and MatMulInt4 of domain "qpasses" (version 1).
//
//   MatMulMXFP4(A, B, E, [bias], [L], [R], [D]) -> Y
//   MatMulInt4(A, B, scales, [zero_points], [bias], [L], [R], [D]) -> Y
//   Y = A' W^T (+ bias) (+ (X_lr L) R),  A' = quant_act((A * D) blockdiag(H_b / sqrt(b)))
//
// Attributes are read and checked once at session creation; constant weights are packed then too.
// Errors come back as ORT statuses naming the node and the problem; nothing throws across the C API.
#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "activations.h"
#include "kernel.h"
#include "prepack.h"
#include "inputs.h"

// The oldest ORT API level the library calls into: the newest function it uses is
// KernelContext_ParallelFor (API 17). The headers may be newer (ORT_API_VERSION 21); every API
// table up to the runtime's own version holds the functions of all earlier levels, and our ops
// declare this level as their OrtCustomOp::version (ORT refuses an op newer than itself; the
// OrtCustomOp fields of levels 18-21, in-place and alias hints, are ones we leave unset anyway).
#define QPASSES_ORT_API 17
static_assert(QPASSES_ORT_API <= ORT_API_VERSION, "the headers are older than the API level the library needs");

namespace qpasses {
namespace {

// Where each input sits in an op's input list (-1: the op has no such input).
struct Slots {
  int A, B, S, zp, bias, L, R, D, count;
};
constexpr Slots kMXFP4Slots{0, 1, 2, -1, 3, 4, 5, 6, 7};
constexpr Slots kInt4Slots{0, 1, 2, 3, 4, 5, 6, 7, 8};

std::optional<int64_t> int_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  int64_t v = 0;
  if (OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &v)) {
    api.ReleaseStatus(st);
    return std::nullopt;
  }
  return v;
}

std::optional<std::string> str_attr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  size_t size = 0;
  if (OrtStatus* st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    api.ReleaseStatus(st);
    return std::nullopt;
  }
  std::string s(size, '\0');
  Ort::ThrowOnError(api.KernelInfoGetAttribute_string(info, name, s.data(), &size));
  s.resize(size ? size - 1 : 0);
  return s;
}

int64_t required(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  auto v = int_attr(api, info, name);
  if (!v) throw Error(std::string("attribute '") + name + "' is required");
  return *v;
}

bool power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// The parsed, validated attributes of one node.
struct Config : WeightSpec {
  ActConfig act;
  bool lowrank_rotated = false;
};

Config parse(const OrtApi& api, const OrtKernelInfo* info, bool mxfp4) {
  Config c;
  c.mxfp4 = mxfp4;
  c.K = required(api, info, "K");
  c.N = required(api, info, "N");
  if (c.K <= 0 || c.N <= 0) throw Error("attributes K and N must be positive");
  c.act.K = c.K;
  if (!mxfp4) {
    c.block_size = required(api, info, "block_size");
    const int64_t bs = c.block_size;
    if (!(bs == 16 || bs == 32 || bs == 64 || bs == 128 || bs == c.K))
      throw Error("block_size must be 16, 32, 64, 128 or K (per channel), got " + std::to_string(bs));
    if (bs < kBlock) c.act.split = bs;
  }
  const int64_t act_bits = required(api, info, "act_bits");
  const auto fmt = str_attr(api, info, "act_format");
  const int64_t act_block = int_attr(api, info, "act_block").value_or(32);
  if (act_bits == 0) {
    c.act.format = ActFormat::kFloat;
  } else if (act_bits == 8) {
    if (fmt && *fmt != "int") throw Error("act_format must be \"int\" with act_bits 8, got \"" + *fmt + "\"");
    c.act.format = ActFormat::kInt8;
  } else if (act_bits == 4) {
    if (!fmt) throw Error("attribute 'act_format' (\"int\" or \"mxfp\") is required with act_bits 4");
    if (*fmt != "int" && *fmt != "mxfp") throw Error("act_format must be \"int\" or \"mxfp\", got \"" + *fmt + "\"");
    c.act.format = *fmt == "mxfp" ? ActFormat::kMXFP4 : ActFormat::kInt4;
  } else {
    throw Error("act_bits must be 0 (float), 8 or 4, got " + std::to_string(act_bits));
  }
  if (act_block != 32 && act_block != 0) throw Error("act_block must be 32 or 0 (per token), got " + std::to_string(act_block));
  if (c.act.format == ActFormat::kMXFP4 && act_block != 32) throw Error("act_format \"mxfp\" uses blocks of 32 (act_block 32)");
  c.act.per_token = act_block == 0 && c.act.format != ActFormat::kFloat;
  if (c.act.per_token && c.act.split) throw Error("per-token activations need a weight block_size of at least 32");
  c.act.hadamard = int_attr(api, info, "hadamard_block").value_or(0);
  if (c.act.hadamard != 0 && (!power_of_two(c.act.hadamard) || c.K % c.act.hadamard != 0))
    throw Error("hadamard_block must be 0 or a power of two dividing K=" + std::to_string(c.K) + ", got " +
                std::to_string(c.act.hadamard));
  const auto lr = str_attr(api, info, "lowrank_input");
  if (lr && *lr != "raw" && *lr != "rotated") throw Error("lowrank_input must be \"raw\" or \"rotated\", got \"" + *lr + "\"");
  c.lowrank_rotated = lr && *lr == "rotated";
  return c;
}

struct RowsTask {
  const Config* cfg;
  const Isa* isa;
  const PackedWeights* w;
  const LowRank* lr;
  const float *A, *D, *bias;
  float* Y;
  ActRows rows;
  std::vector<float> T;  // [M, rank]
  int64_t M = 0, row_chunk = 1, tile_chunk = 1, n_tile_chunks = 1;
};

// y[n] += bias[n] + sum_j t[j] M[j, n], n in [n0, n1), with M = lr's L (left: t = x, j < K, n < rank)
// or R (t = the row of T, j < rank), in the type it is stored in; R one panel call at a time.
template <typename T>
void lowrank_term(EpilogueOf<T> epilogue, const LowRank& lr, const std::vector<T>& L, const std::vector<T>& R,
                  bool left, float* y, const float* bias, const float* t, int64_t n0, int64_t n1) {
  if (left) return epilogue(y, bias, t, L.data(), lr.K, lr.rank, n0, n1, true);
  for (int64_t p = n0 / kPanel; p * kPanel < n1; ++p) {
    const int64_t base = p * kPanel;
    epilogue(y + base, bias ? bias + base : nullptr, t, R.data() + p * lr.rank * kPanel, lr.rank, kPanel,
             std::max(n0, base) - base, std::min(n1, base + kPanel) - base, false);
  }
}

void lowrank_term(const Isa& isa, const LowRank& lr, bool left, float* y, const float* bias, const float* t,
                  int64_t n0, int64_t n1) {
  if (lr.L16.empty())
    lowrank_term<float>(isa.epilogue, lr, lr.L, lr.R, left, y, bias, t, n0, n1);
  else
    lowrank_term<uint16_t>(isa.epilogue_f16, lr, lr.L16, lr.R16, left, y, bias, t, n0, n1);
}

void prepare(RowsTask& t, int64_t m) {
  const Config& c = *t.cfg;
  thread_local std::vector<float> x;
  x.assign(t.A + m * c.K, t.A + (m + 1) * c.K);
  const int64_t rank = t.lr ? t.lr->rank : 0;
  // T[m] = x L: the epilogue's y += t R with t = x (length K) and R = L [K, rank], vectorized over rank.
  float* tm = rank ? t.T.data() + m * rank : nullptr;
  if (rank) std::fill(tm, tm + rank, 0.f);
  if (rank && !c.lowrank_rotated) lowrank_term(*t.isa, *t.lr, true, tm, nullptr, x.data(), 0, rank);
  rotate_row(x.data(), c.K, t.D, c.act.hadamard);
  if (rank && c.lowrank_rotated) lowrank_term(*t.isa, *t.lr, true, tm, nullptr, x.data(), 0, rank);
  quantize_row(*t.isa, c.act, x.data(), t.rows, m);
}

// Ask for the R panels of columns [n0, n1) before the chunk's matmul, so they arrive while it runs
// (a cold panel read after it stalls on DRAM latency: decode reads every byte once per token).
void prefetch_panels(const LowRank& lr, int64_t n0, int64_t n1) {
  const bool half = !lr.R16.empty();
  const char* base = half ? reinterpret_cast<const char*>(lr.R16.data()) : reinterpret_cast<const char*>(lr.R.data());
  const int64_t elem = half ? 2 : 4, panel = lr.rank * kPanel * elem;
  const char* end = base + ((n1 + kPanel - 1) / kPanel) * panel;
  // into L2 (hint 2): the matmul streams through L1 meanwhile
  for (const char* p = base + (n0 / kPanel) * panel; p < end; p += 64) __builtin_prefetch(p, 0, 2);
}

void multiply(RowsTask& t, size_t task) {
  const int64_t rc = int64_t(task) / t.n_tile_chunks, tc = int64_t(task) % t.n_tile_chunks;
  const int64_t m0 = rc * t.row_chunk, m1 = std::min(t.M, m0 + t.row_chunk);
  const int64_t t0 = tc * t.tile_chunk, t1 = std::min(t.w->ntiles, t0 + t.tile_chunk);
  const GemmFn gemm = t.cfg->act.format == ActFormat::kFloat ? t.isa->gemm_float : t.isa->gemm_int;
  if (t.lr) prefetch_panels(*t.lr, t0 * kTile, std::min(t.w->N, t1 * kTile));
  gemm(*t.w, t.rows, m0, m1, t0, t1, t.Y, t.w->N);
  const int64_t rank = t.lr ? t.lr->rank : 0;
  if (!t.bias && !rank) return;
  const int64_t n0 = t0 * kTile, n1 = std::min(t.w->N, t1 * kTile);
  for (int64_t m = m0; m < m1; ++m) {
    float* y = t.Y + m * t.w->N;
    if (rank)
      lowrank_term(*t.isa, *t.lr, false, y, t.bias, t.T.data() + m * rank, n0, n1);
    else
      t.isa->epilogue(y, t.bias, nullptr, nullptr, 0, t.w->N, n0, n1, false);
  }
}

class Kernel {
 public:
  Kernel(const OrtApi& api, const OrtKernelInfo* info, bool mxfp4) : slots_(mxfp4 ? kMXFP4Slots : kInt4Slots) {
    Ort::ConstKernelInfo ki(info);
    name_ = std::string(mxfp4 ? "qpasses.MatMulMXFP4" : "qpasses.MatMulInt4") + " node '" + ki.GetNodeName() + "'";
    try {
      present_.assign(size_t(slots_.count), false);
      for (size_t i = 0; i < ki.GetInputCount() && i < present_.size(); ++i) present_[i] = !ki.GetInputName(i).empty();
      const bool has_lowrank = has(slots_.L) || has(slots_.R);
      if (has(slots_.L) != has(slots_.R)) throw Error("inputs L and R must be given together");
      cfg_ = parse(api, info, mxfp4);
      if (has_lowrank && (cfg_.act.hadamard || has(slots_.D)) && !str_attr(api, info, "lowrank_input"))
        throw Error("attribute 'lowrank_input' (\"raw\" or \"rotated\") is required with a rotation and L, R");
      std::string why;
      isa_ = select_isa(&why);
      if (!isa_) throw Error(why);
      pack_constants(ki);
    } catch (const std::exception& e) {
      throw Error(name_ + ": " + e.what());
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Compute(Ort::KernelContext(context));
      return nullptr;
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (name_ + ": " + e.what()).c_str());
    }
  }

 private:
  bool has(int slot) const { return slot >= 0 && present_[size_t(slot)]; }

  WeightInputs weight_inputs(const std::vector<Ort::ConstValue>& v) const {
    WeightInputs in;
    in.B = v[size_t(slots_.B)];
    in.S = v[size_t(slots_.S)];
    if (has(slots_.zp)) in.zp = v[size_t(slots_.zp)];
    return in;
  }

  void pack_constants(const Ort::ConstKernelInfo& ki) {
    auto constant = [&](int slot) -> Ort::ConstValue {
      int is_const = 0;
      Ort::ConstValue v = ki.GetTensorConstantInput(size_t(slot), &is_const);
      return is_const ? v : Ort::ConstValue(nullptr);
    };
    std::vector<Ort::ConstValue> v(size_t(slots_.count), Ort::ConstValue(nullptr));
    bool all = true;
    for (int s : {slots_.B, slots_.S, slots_.zp})
      if (has(s)) all &= (v[size_t(s)] = constant(s)) != nullptr;
    if (all) packed_ = pack_weights(cfg_, weight_inputs(v));
    if (has(slots_.L)) {
      Ort::ConstValue L = constant(slots_.L), R = constant(slots_.R);
      if (L && R) lowrank_ = make_lowrank(cfg_.K, cfg_.N, L, R);
    }
  }

  void Compute(Ort::KernelContext ctx) {
    std::vector<Ort::ConstValue> v(size_t(slots_.count), Ort::ConstValue(nullptr));
    for (size_t i = 0; i < v.size() && i < ctx.GetInputCount(); ++i) v[i] = ctx.GetInput(i);
    Ort::ConstValue A = v[size_t(slots_.A)];
    if (!A) throw Error("input A is missing");
    const std::vector<int64_t> shape = checked_input_shape(A, cfg_.K);
    const int64_t M = count_rows(shape);

    std::optional<PackedWeights> local;
    const PackedWeights& w = packed_ ? *packed_ : local.emplace(pack_weights(cfg_, weight_inputs(v)));
    std::optional<LowRank> local_lr;
    const LowRank* lr = nullptr;
    if (has(slots_.L)) lr = lowrank_ ? &*lowrank_ : &local_lr.emplace(make_lowrank(cfg_.K, cfg_.N, v[size_t(slots_.L)], v[size_t(slots_.R)]));

    RowsTask t;
    t.cfg = &cfg_;
    t.isa = isa_;
    t.w = &w;
    t.lr = lr;
    t.A = A.GetTensorData<float>();
    t.D = has(slots_.D) ? vector_input(v[size_t(slots_.D)], cfg_.K, "D") : nullptr;
    t.bias = has(slots_.bias) ? vector_input(v[size_t(slots_.bias)], cfg_.N, "bias") : nullptr;
    std::vector<int64_t> out_shape = shape;
    out_shape.back() = cfg_.N;
    t.Y = ctx.GetOutput(0, out_shape).GetTensorMutableData<float>();
    if (M == 0) return;
    t.M = M;
    shape_rows(t.rows, M, w.nb, cfg_.act.format);
    if (lr) t.T.assign(size_t(M * lr->rank), 0.f);

    // Rows first (in parallel when there are several), then (row chunk x tile chunk) tasks.
    parallel(ctx, size_t(M), [&t](size_t m) { prepare(t, int64_t(m)); });
    const int64_t tile_bytes = w.nb * (kTileBytes + kTile * 4);
    t.row_chunk = M == 1 ? 1 : 16;
    t.tile_chunk = std::max<int64_t>(1, (M == 1 ? 48 << 10 : 16 << 10) / tile_bytes);
    if (lr && t.tile_chunk >= kPanel / kTile) t.tile_chunk -= t.tile_chunk % (kPanel / kTile);  // whole R panels
    t.n_tile_chunks = (w.ntiles + t.tile_chunk - 1) / t.tile_chunk;
    const int64_t tasks = ((M + t.row_chunk - 1) / t.row_chunk) * t.n_tile_chunks;
    parallel(ctx, size_t(tasks), [&t](size_t i) { multiply(t, i); });
  }

  template <typename F>
  static void parallel(const Ort::KernelContext& ctx, size_t total, F fn) {
    if (total == 1) return fn(0);
    ctx.ParallelFor([](void* f, size_t i) { (*static_cast<F*>(f))(i); }, total, 0, &fn);
  }

  Slots slots_;
  std::string name_;
  std::vector<bool> present_;
  Config cfg_;
  const Isa* isa_ = nullptr;
  std::optional<PackedWeights> packed_;
  std::optional<LowRank> lowrank_;
};

template <bool MXFP4>
struct MatMulOp : Ort::CustomOpBase<MatMulOp<MXFP4>, Kernel, true> {
  MatMulOp() { this->version = QPASSES_ORT_API; }
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(api, info, MXFP4);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return MXFP4 ? "MatMulMXFP4" : "MatMulInt4"; }
  size_t GetInputTypeCount() const { return size_t((MXFP4 ? kMXFP4Slots : kInt4Slots).count); }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    const Slots s = MXFP4 ? kMXFP4Slots : kInt4Slots;
    const int idx = int(i);
    if (idx == s.B || idx == s.zp || (MXFP4 && idx == s.S)) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    if (idx == s.L || idx == s.R) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // float or float16
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i < 3 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

}  // namespace
}  // namespace qpasses

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(OrtSessionOptions* options,
                                                                               const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(QPASSES_ORT_API);
  if (!api)
    return base->GetApi(1)->CreateStatus(
        ORT_FAIL, (std::string("qpasses runtime: onnxruntime ") + base->GetVersionString() +
                   " is too old for libqpasses_ops.so; it needs onnxruntime >= 1." QPASSES_STR(QPASSES_ORT_API) " (ORT API " QPASSES_STR(QPASSES_ORT_API) ")")
                      .c_str());
  Ort::InitApi(api);
  static qpasses::MatMulOp<true> mxfp4;
  static qpasses::MatMulOp<false> int4;
  try {
    // One domain per registration: sessions keep pointers to it, so it lives as long as the library.
    static std::vector<std::unique_ptr<Ort::CustomOpDomain>> domains;
    auto domain = std::make_unique<Ort::CustomOpDomain>("qpasses");
    domain->Add(&mxfp4);
    domain->Add(&int4);
    Ort::UnownedSessionOptions(options).Add(*domain);
    domains.push_back(std::move(domain));
    return nullptr;
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
}
