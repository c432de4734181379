#include "model_header.h"

#include <cctype>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <string_view>

namespace {

// A reader of the protobuf wire format: each field is a (number, wire type) tag followed by a
// varint, a fixed 8 or 4 bytes, or a length-prefixed byte string.
class Wire {
 public:
  explicit Wire(std::string_view bytes) : rest_(bytes) {}
  bool done() const { return rest_.empty(); }

  uint64_t varint() {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (rest_.empty()) throw Error("truncated varint");
      const auto byte = static_cast<uint8_t>(rest_.front());
      rest_.remove_prefix(1);
      value |= uint64_t{byte & 0x7fu} << shift;
      if (!(byte & 0x80u)) return value;
    }
    throw Error("varint longer than 10 bytes");
  }

  std::string_view bytes() { return take(varint()); }

  void skip(int wire_type) {
    switch (wire_type) {
      case 0: varint(); return;
      case 1: take(8); return;
      case 2: bytes(); return;
      case 5: take(4); return;
      default: throw Error("unknown wire type " + std::to_string(wire_type));
    }
  }

 private:
  std::string_view take(uint64_t n) {
    if (n > rest_.size()) throw Error("a field runs past the end of the file");
    const std::string_view out = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return out;
  }
  std::string_view rest_;
};

// The string fields of a small message by field number, e.g. {1: key, 2: value}.
std::map<int, std::string> string_fields(std::string_view message) {
  std::map<int, std::string> out;
  Wire wire(message);
  while (!wire.done()) {
    const uint64_t tag = wire.varint();
    if ((tag & 7) == 2) {
      out[static_cast<int>(tag >> 3)] = std::string(wire.bytes());
    } else {
      wire.skip(static_cast<int>(tag & 7));
    }
  }
  return out;
}

// A JSON reader for exactly the shape of `qpasses.ort`: objects, strings, integers and null.
class SettingsParser {
 public:
  SettingsParser(const std::string& text, const std::string& where) : text_(text), where_(where) {}

  SessionSettings parse() {
    SessionSettings settings;
    object([&](const std::string& key) {
      if (key == "optimization") {
        if (!null()) settings.optimization = level(string());
      } else if (key == "config") {
        if (!null()) object([&](const std::string& name) { settings.config.emplace_back(name, scalar()); });
      } else {
        fail("unknown key \"" + key + "\" (it has optimization and config)");
      }
    });
    space();
    if (pos_ != text_.size()) fail("text after the object");
    return settings;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw Error(where_ + " is not what qpasses writes: " + why + " (at character " + std::to_string(pos_) + ")");
  }
  void space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool accept(char c) {
    space();
    if (pos_ == text_.size() || text_[pos_] != c) return false;
    ++pos_;
    return true;
  }
  void expect(char c) {
    if (!accept(c)) fail(std::string("expected '") + c + "'");
  }
  bool null() {
    space();
    if (text_.compare(pos_, 4, "null") != 0) return false;
    pos_ += 4;
    return true;
  }
  template <typename OnKey>
  void object(OnKey on_key) {
    expect('{');
    if (accept('}')) return;
    do {
      const std::string key = string();
      expect(':');
      on_key(key);
    } while (accept(','));
    expect('}');
  }
  std::string string() {
    expect('"');
    std::string out;
    while (pos_ < text_.size() && text_[pos_] != '"') {
      char c = text_[pos_++];
      if (c == '\\' && pos_ < text_.size()) {
        const std::string_view escapes = "\"\\/bfnrt", meanings = "\"\\/\b\f\n\r\t";
        const size_t which = escapes.find(text_[pos_++]);
        if (which == std::string_view::npos) fail("unsupported escape (non-ASCII text?)");
        c = meanings[which];
      }
      out += c;
    }
    expect('"');
    return out;
  }
  std::string scalar() {  // a config value: a string, or an integer kept as its decimal text
    space();
    if (pos_ < text_.size() && text_[pos_] == '"') return string();
    const size_t start = pos_;
    if (pos_ < text_.size() && text_[pos_] == '-') ++pos_;
    const size_t digits = pos_;
    while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) ++pos_;
    if (pos_ == digits) fail("a config value must be a string or an integer");
    return text_.substr(start, pos_ - start);
  }
  std::string level(const std::string& name) {
    if (name != "disable" && name != "basic" && name != "extended" && name != "all")
      fail("unknown optimization level \"" + name + "\"");
    return name;
  }

  const std::string& text_;
  const std::string& where_;
  size_t pos_ = 0;
};

}  // namespace

ModelHeader read_model_header(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("cannot open " + path.string());
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  constexpr int kOpsetImport = 8, kMetadataProps = 14;  // field numbers of onnx.proto's ModelProto
  ModelHeader header;
  try {
    Wire wire(bytes);
    while (!wire.done()) {
      const uint64_t tag = wire.varint();
      const int field = static_cast<int>(tag >> 3), type = static_cast<int>(tag & 7);
      if (type == 2 && field == kOpsetImport) {
        header.domains.insert(string_fields(wire.bytes())[1]);  // OperatorSetIdProto.domain
      } else if (type == 2 && field == kMetadataProps) {
        auto entry = string_fields(wire.bytes());  // StringStringEntryProto {1: key, 2: value}
        header.metadata[entry[1]] = entry[2];
      } else {
        wire.skip(type);
      }
    }
  } catch (const Error& e) {
    throw Error(path.string() + " is not a readable ONNX file: " + e.what());
  }
  return header;
}

SessionSettings parse_session_settings(const std::string& json, const std::string& where) {
  return SettingsParser(json, where).parse();
}
