// A small command-line parser for the example programs: --name value options with defaults and
// help text, --flag switches, --help. Unknown options and bad values are errors that name them.
#pragma once

#include <cstdio>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include "kern/core/error.hpp"

namespace kern::examples {

class command_line {
public:
  command_line(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  // Declares an option with its default ("" for none) and help.
  void option(const std::string& name, std::string fallback, std::string help) {
    options_[name] = {std::move(fallback), std::move(help), false};
    order_.push_back(name);
  }
  void flag(const std::string& name, std::string help) {
    options_[name] = {"", std::move(help), true};
    order_.push_back(name);
  }

  // Parses argv; false when --help was asked (the usage is printed then).
  bool parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        print_usage();
        return false;
      }
      require(arg.rfind("--", 0) == 0, program_, "unexpected argument '", arg, "' (options start with --; see --help)");
      const auto it = options_.find(arg.substr(2));
      require(it != options_.end(), program_, "unknown option '", arg, "' (see --help)");
      if (it->second.is_flag) {
        it->second.value = "1";
      } else {
        require(i + 1 < argc, program_, "option '", arg, "' needs a value");
        it->second.value = argv[++i];
      }
      it->second.given = true;
    }
    return true;
  }

  bool given(const std::string& name) const { return entry(name).given; }
  std::string text(const std::string& name) const { return entry(name).value; }
  bool is_set(const std::string& name) const { return entry(name).value == "1"; }

  long long integer(const std::string& name) const {
    const std::string& v = entry(name).value;
    std::size_t used = 0;
    long long x = 0;
    try {
      x = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!v.empty() && used == v.size(), program_, "--", name, " = '", v, "' is not an integer");
    return x;
  }
  double real(const std::string& name) const {
    const std::string& v = entry(name).value;
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    require(!v.empty() && used == v.size(), program_, "--", name, " = '", v, "' is not a number");
    return x;
  }

  void print_usage() const {
    std::printf("%s\n\nusage: %s [options]\n\n", summary_.c_str(), program_.c_str());
    for (const std::string& name : order_) {
      const spec& s = options_.at(name);
      std::string left = "  --" + name + (s.is_flag ? "" : " VALUE");
      std::printf("%-28s %s%s\n", left.c_str(), s.help.c_str(),
                  s.is_flag || s.value.empty() ? "" : (" (default: " + s.value + ")").c_str());
    }
  }

private:
  struct spec {
    std::string value;
    std::string help;
    bool is_flag = false;
    bool given = false;
  };
  const spec& entry(const std::string& name) const { return options_.at(name); }

  std::string program_, summary_;
  std::map<std::string, spec> options_;
  std::vector<std::string> order_;
};

// A program's main: run(argc, argv), its errors printed on stderr with a non-zero exit.
template <class Run> int run_program(int argc, char** argv, Run run) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nerror: %s\n", e.what());
    return 1;
  }
}

} // namespace kern::examples
