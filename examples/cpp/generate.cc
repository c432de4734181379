// Greedy generation from a qpasses deployed folder with the onnxruntime C++ API, nothing else.
//
//   generate [--ops LIBRARY] [--threads N] FOLDER STEPS ID [ID ...]
//
// Loads FOLDER/model.onnx (the KV-cache step graph), registers the custom-op library
// (FOLDER/libqpasses_ops.so, or --ops), applies the session settings the compiler recorded in the
// model's `qpasses.ort` metadata (as qpasses.runtime.session does, so the tokens are the same),
// runs the prompt ids once with an empty past, then one token per step feeding present.* back as
// past_key_values.*. Prints the STEPS new token ids on one line (stdout), the settings and the
// speed on stderr; any error is one line on stderr and exit status 1.

#define ORT_API_MANUAL_INIT  // the API comes from the library opened at run time (open_onnxruntime)
#include <onnxruntime_cxx_api.h>

#include <dlfcn.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "model_header.h"

namespace fs = std::filesystem;

namespace {

#ifndef ORT_LIBRARY_NAME
#define ORT_LIBRARY_NAME "libonnxruntime.so.1"  // the wheel library's SONAME; CMake passes it
#endif
constexpr const char* kModelFile = "model.onnx";
constexpr const char* kLibraryFile = "libqpasses_ops.so";
constexpr const char* kCustomDomain = "qpasses";
constexpr const char* kSettingsKey = "qpasses.ort";
constexpr const char* kMinimumKey = "qpasses.onnxruntime_min";
constexpr const char* kPastPrefix = "past_key_values.";
constexpr const char* kPresentPrefix = "present.";

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// ---------------------------------------------------------------------------------------------
// The step graph: which inputs to feed, and one forward pass.

class StepGraph {
 public:
  explicit StepGraph(Ort::Session& session) : session_(session) {
    Ort::AllocatorWithDefaultOptions allocator;
    for (size_t i = 0; i < session.GetInputCount(); ++i) {
      inputs_.push_back(session.GetInputNameAllocated(i, allocator).get());
      const std::string& name = inputs_.back();
      const Ort::TypeInfo type = session.GetInputTypeInfo(i);  // owns what `info` refers to
      const auto info = type.GetTensorTypeAndShapeInfo();
      if (name.rfind(kPastPrefix, 0) == 0) {
        const auto shape = info.GetShape();  // [batch, kv_heads, past, head_dim]
        if (shape.size() != 4 || shape[1] <= 0 || shape[3] <= 0)
          throw Error("model.onnx input " + name + " is not [batch, kv_heads, past, head_dim] with fixed heads");
        empty_past_.push_back({{1, shape[1], 0, shape[3]}, info.GetElementType()});
        outputs_.push_back(kPresentPrefix + name.substr(std::string(kPastPrefix).size()));
      } else if (name == "input_ids" || name == "attention_mask" || name == "position_ids") {
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
          throw Error("model.onnx input " + name + " is not int64");
      } else {
        throw Error("model.onnx has an input this program does not feed: " + name);
      }
    }
    if (outputs_.empty()) throw Error("model.onnx is not a KV-cache step graph: it has no past_key_values.* inputs");
    outputs_.insert(outputs_.begin(), "logits");
    std::set<std::string> produced;
    for (size_t i = 0; i < session.GetOutputCount(); ++i) produced.insert(session.GetOutputNameAllocated(i, allocator).get());
    for (const std::string& name : outputs_)
      if (!produced.count(name)) throw Error("model.onnx has no output " + name);
  }

  // The empty past of the prefill: [1, kv_heads, 0, head_dim] per past input.
  std::vector<Ort::Value> empty_past() const {
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<Ort::Value> past;
    for (const auto& [shape, type] : empty_past_)
      past.push_back(Ort::Value::CreateTensor(allocator, shape.data(), shape.size(), type));
    return past;
  }

  // Runs `tokens` at positions start.. with `past`; replaces `past` by the presents and returns
  // the argmax of the last position's logits.
  int64_t step(const std::vector<int64_t>& tokens, int64_t start, std::vector<Ort::Value>& past) {
    const auto n = static_cast<int64_t>(tokens.size());
    std::vector<int64_t> ids = tokens, mask(start + n, 1), positions(n);
    for (int64_t i = 0; i < n; ++i) positions[i] = start + i;
    const auto memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const int64_t seq_shape[] = {1, n}, mask_shape[] = {1, start + n};
    std::vector<Ort::Value> feeds;
    size_t next_past = 0;
    for (const std::string& name : inputs_) {
      if (name == "input_ids") {
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(memory, ids.data(), ids.size(), seq_shape, 2));
      } else if (name == "attention_mask") {
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(memory, mask.data(), mask.size(), mask_shape, 2));
      } else if (name == "position_ids") {
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(memory, positions.data(), positions.size(), seq_shape, 2));
      } else {
        feeds.push_back(std::move(past[next_past++]));
      }
    }
    std::vector<const char*> in_names, out_names;
    for (const auto& s : inputs_) in_names.push_back(s.c_str());
    for (const auto& s : outputs_) out_names.push_back(s.c_str());
    auto out = session_.Run(Ort::RunOptions{nullptr}, in_names.data(), feeds.data(), feeds.size(),
                            out_names.data(), out_names.size());
    const int64_t token = argmax_last(out[0]);
    past.clear();
    for (size_t i = 1; i < out.size(); ++i) past.push_back(std::move(out[i]));
    return token;
  }

 private:
  // The first index of the largest logit of the last position (numpy's argmax).
  static int64_t argmax_last(const Ort::Value& logits) {
    const auto info = logits.GetTensorTypeAndShapeInfo();
    const int64_t vocab = info.GetShape().back();  // logits: [1, seq, vocab]
    const size_t last = info.GetElementCount() - static_cast<size_t>(vocab);
    switch (info.GetElementType()) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT:
        return first_max(logits.GetTensorData<float>() + last, vocab);
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16:
        return first_max(logits.GetTensorData<Ort::Float16_t>() + last, vocab);
      default:
        throw Error("model.onnx's logits are neither float32 nor float16");
    }
  }

  template <typename T>
  static int64_t first_max(const T* values, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (static_cast<float>(values[i]) > static_cast<float>(values[best])) best = i;
    return best;
  }

  Ort::Session& session_;
  std::vector<std::string> inputs_, outputs_;  // session input order; logits then present.* by past order
  std::vector<std::pair<std::vector<int64_t>, ONNXTensorElementDataType>> empty_past_;  // per past input
};

// ---------------------------------------------------------------------------------------------
// The command line and the session.

struct Options {
  fs::path folder, library;  // library empty: FOLDER/libqpasses_ops.so when present
  int threads = 0;           // 0: onnxruntime's default
  int64_t steps = 0;
  std::vector<int64_t> prompt;
};

constexpr const char* kUsage = "usage: generate [--ops LIBRARY] [--threads N] FOLDER STEPS ID [ID ...]";

int64_t parse_int(const std::string& text, const std::string& what, int64_t minimum) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || text.empty() || value < minimum)
    throw Error(what + " must be an integer >= " + std::to_string(minimum) + ", got \"" + text + "\"");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--ops" || arg == "--threads") && i + 1 >= argc) throw Error(arg + " needs a value; " + kUsage);
    if (arg == "--ops") {
      options.library = argv[++i];
    } else if (arg == "--threads") {
      options.threads = static_cast<int>(parse_int(argv[++i], "--threads", 1));
    } else if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n";
      std::exit(0);
    } else if (arg.rfind("--", 0) == 0) {
      throw Error("unknown option " + arg + "; " + kUsage);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 3) throw Error(kUsage);
  options.folder = positional[0];
  options.steps = parse_int(positional[1], "STEPS", 1);
  for (size_t i = 2; i < positional.size(); ++i) options.prompt.push_back(parse_int(positional[i], "a token id", 0));
  return options;
}

// major * 1000 + minor of "1.22" / "1.32.0" (0 when it is not a version).
int version_key(const std::string& version) {
  int major = 0, minor = 0;
  return std::sscanf(version.c_str(), "%d.%d", &major, &minor) == 2 ? major * 1000 + minor : 0;
}

// The folder's own floor: the `qpasses.onnxruntime_min` metadata ({"version": "1.22", "reasons": [...]}),
// the oldest onnxruntime that runs the graph's ops; an older one would fail on some op's schema.
void check_minimum(const ModelHeader& header, const fs::path& model, const std::string& installed) {
  const auto it = header.metadata.find(kMinimumKey);
  if (it == header.metadata.end()) return;
  const std::string tag = "\"version\": \"";
  const size_t at = it->second.find(tag);
  const std::string need = at == std::string::npos ? "" : it->second.substr(at + tag.size(),
                                                                            it->second.find('"', at + tag.size()) - at - tag.size());
  if (version_key(need) > version_key(installed))
    throw Error(model.string() + " needs onnxruntime >= " + need + ", but this is " + installed +
                " (point LD_LIBRARY_PATH at a newer libonnxruntime.so.1)");
}

// Session options as qpasses.runtime.session makes them: the metadata's optimization level and
// config entries, our library registered (CPU provider, the default). `described` gets one line.
Ort::SessionOptions session_options(const Options& options, const fs::path& model, const std::string& version,
                                    std::string& described) {
  const ModelHeader header = read_model_header(model);
  check_minimum(header, model, version);
  SessionSettings settings;
  if (auto it = header.metadata.find(kSettingsKey); it != header.metadata.end())
    settings = parse_session_settings(it->second, "metadata " + std::string(kSettingsKey) + " of " + model.string());
  const std::map<std::string, GraphOptimizationLevel> levels = {
      {"disable", ORT_DISABLE_ALL}, {"basic", ORT_ENABLE_BASIC},
      {"extended", ORT_ENABLE_EXTENDED}, {"all", ORT_ENABLE_ALL}};
  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(levels.at(settings.optimization));
  described = "optimization " + settings.optimization;
  for (const auto& [key, value] : settings.config) {
    so.AddConfigEntry(key.c_str(), value.c_str());
    described += ", " + key + "=" + value;
  }
  if (options.threads > 0) so.SetIntraOpNumThreads(options.threads);

  fs::path library = options.library;
  if (library.empty() && fs::is_regular_file(options.folder / kLibraryFile)) library = options.folder / kLibraryFile;
  if (!options.library.empty() && !fs::is_regular_file(library))
    throw Error("custom-op library " + library.string() + " does not exist");
  if (library.empty() && header.domains.count(kCustomDomain))
    throw Error(model.string() + " uses the " + kCustomDomain + " custom ops but " +
                (options.folder / kLibraryFile).string() + " does not exist; copy it there or pass --ops LIBRARY");
  if (!library.empty()) {
    try {
      so.RegisterCustomOpsLibrary(library.c_str());
    } catch (const Ort::Exception& e) {
      throw Error("cannot register custom-op library " + library.string() + ": " + first_line(e.what()));
    }
    described += ", library " + library.string();
  }
  return so;
}

// onnxruntime is opened by name at run time, not linked: the wheel's library versions its symbols
// (OrtGetApiBase@VERS_1.32.0), so a linked program would start only with that very release. Opened
// by name it runs on any release that has the API version of our headers, and an older one gets a
// one-line error. The build's RPATH points at the wheel's library; LD_LIBRARY_PATH picks another.
const OrtApi* open_onnxruntime(std::string& version) {
  void* library = dlopen(ORT_LIBRARY_NAME, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) throw Error(std::string("cannot load onnxruntime: ") + dlerror());
  using GetApiBase = const OrtApiBase* (*)();
  const auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(library, "OrtGetApiBase"));
  if (get_api_base == nullptr) throw Error(std::string(ORT_LIBRARY_NAME) + " has no OrtGetApiBase: is it onnxruntime?");
  const OrtApiBase* base = get_api_base();
  version = base->GetVersionString();
  int major = 0, minor = 0;
  const bool old = std::sscanf(version.c_str(), "%d.%d", &major, &minor) == 2 && major == 1 && minor < ORT_API_VERSION;
  const OrtApi* api = old ? nullptr : base->GetApi(ORT_API_VERSION);  // an old release would also print a warning
  if (api == nullptr)
    throw Error("onnxruntime " + version + " is too old: this program needs 1." + std::to_string(ORT_API_VERSION) +
                " or newer (the API version of the headers it was built with)");
  return api;
}

void run(const Options& options) {
  const fs::path model = options.folder / kModelFile;
  if (!fs::is_regular_file(model))
    throw Error(model.string() + " does not exist; FOLDER must be a qpasses deployed folder");
  std::string version;
  Ort::InitApi(open_onnxruntime(version));

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "generate");
  std::string settings;
  Ort::SessionOptions so = session_options(options, model, version, settings);
  std::unique_ptr<Ort::Session> session;
  try {
    session = std::make_unique<Ort::Session>(env, model.c_str(), so);
  } catch (const Ort::Exception& e) {
    throw Error("onnxruntime " + version + " cannot load " + model.string() + ": " + first_line(e.what()));
  }
  StepGraph graph(*session);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  std::vector<Ort::Value> past = graph.empty_past();
  std::vector<int64_t> generated = {graph.step(options.prompt, 0, past)};
  const auto t1 = Clock::now();
  auto position = static_cast<int64_t>(options.prompt.size());
  while (static_cast<int64_t>(generated.size()) < options.steps)
    generated.push_back(graph.step({generated.back()}, position++, past));
  const auto t2 = Clock::now();

  for (size_t i = 0; i < generated.size(); ++i) std::cout << (i ? " " : "") << generated[i];
  std::cout << std::endl;
  const double prefill = std::chrono::duration<double>(t1 - t0).count();
  const double decode = std::chrono::duration<double>(t2 - t1).count();
  const auto decoded = static_cast<int64_t>(generated.size()) - 1;
  std::fprintf(stderr, "onnxruntime %s; %s\n", version.c_str(), settings.c_str());
  std::fprintf(stderr, "prefill %zu tokens in %.1f ms; decode %lld tokens in %.1f ms (%.1f tokens/s)\n",
               options.prompt.size(), prefill * 1e3, static_cast<long long>(decoded),
               decode * 1e3, decoded > 0 ? decoded / decode : 0.0);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    run(parse_options(argc, argv));
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "generate: error: %s\n", e.what());
  } catch (const Ort::Exception& e) {
    std::fprintf(stderr, "generate: error: onnxruntime: %s\n", first_line(e.what()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: error: %s\n", first_line(e.what()).c_str());
  }
  return 1;
}
