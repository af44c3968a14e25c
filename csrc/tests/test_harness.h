// Minimal unit-test harness for the torch-free core (no external framework).
//
//   ASTRA_TEST(name) { ASTRA_CHECK(cond); ASTRA_CHECK_EQ(a, b); }
//   int main() { return astra::test::run_all(); }
#pragma once

#include <cstdio>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

namespace astra::test {

struct TestCase {
  const char* name;
  void (*fn)();
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> cases;
  return cases;
}

struct Registrar {
  Registrar(const char* name, void (*fn)()) { registry().push_back({name, fn}); }
};

// Failed checks of the running test (printed up to a limit, all counted).
inline int& current_failures() {
  static int failures = 0;
  return failures;
}

inline void report_failure(const char* file, int line, const std::string& what) {
  if (++current_failures() <= 10) std::fprintf(stderr, "  %s:%d: %s\n", file, line, what.c_str());
}

inline int run_all() {
  int failed = 0;
  for (const TestCase& t : registry()) {
    current_failures() = 0;
    try {
      t.fn();
    } catch (const std::exception& e) {
      report_failure(__FILE__, __LINE__, std::string("exception: ") + e.what());
    }
    const bool ok = current_failures() == 0;
    std::printf("[%s] %s", ok ? "  OK  " : "FAILED", t.name);
    if (!ok) std::printf(" (%d failed checks)", current_failures());
    std::printf("\n");
    failed += ok ? 0 : 1;
  }
  std::printf("%zu tests, %d failed\n", registry().size(), failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace astra::test

#define ASTRA_TEST(name)                                                    \
  static void name();                                                       \
  static const ::astra::test::Registrar name##_registrar(#name, &name);     \
  static void name()

#define ASTRA_CHECK(cond)                                                       \
  do {                                                                          \
    if (!(cond)) ::astra::test::report_failure(__FILE__, __LINE__, "CHECK(" #cond ")"); \
  } while (0)

#define ASTRA_CHECK_EQ(a, b)                                                     \
  do {                                                                           \
    const auto& astra_a_ = (a);                                                  \
    const auto& astra_b_ = (b);                                                  \
    if (!(astra_a_ == astra_b_)) {                                               \
      std::ostringstream astra_msg_;                                             \
      astra_msg_ << "CHECK_EQ(" #a ", " #b "): " << astra_a_ << " != " << astra_b_; \
      ::astra::test::report_failure(__FILE__, __LINE__, astra_msg_.str());       \
    }                                                                            \
  } while (0)
