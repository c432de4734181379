// What generate needs from model.onnx before it creates the session: the session settings the
// compiler recorded (they go into the session options) and the operator domains (does the graph
// need our custom-op library?). No onnxruntime here: the file is read as protobuf by hand, which is
// cheap because its weights live in the external data file.
#pragma once

#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

// A bad input, said in one line.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ModelHeader {
  std::map<std::string, std::string> metadata;  // ModelProto.metadata_props
  std::set<std::string> domains;                // ModelProto.opset_import[].domain
};

// Session settings as qpasses.runtime.ort reads them from the `qpasses.ort` metadata entry:
// {"optimization": "disable"|"basic"|"extended"|"all"|null, "config": {"key": "value"|integer}|null}.
struct SessionSettings {
  std::string optimization = "all";  // qpasses' default when the metadata names none
  std::vector<std::pair<std::string, std::string>> config;
};

// The metadata and domains of the ONNX file at `path`; throws Error when it is not readable ONNX.
ModelHeader read_model_header(const std::filesystem::path& path);

// The settings in `json` (the value of `qpasses.ort`); `where` names it in the error message.
SessionSettings parse_session_settings(const std::string& json, const std::string& where);
