// GoogleTest's syntax without its machinery, for the hipcc compile check only.
//
// clang 15 (Debian's HIP toolchain) crashes on GoogleTest's own header in C++20 HIP mode, host and
// device passes alike (while instantiating its std::map of code locations). The compile check only
// needs the test sources to compile, so that hipcc builds every kernel they launch for the AMD
// targets; nothing it builds is linked or run. So it reads these compile-only definitions instead.
#pragma once

#include <string>

namespace testing {
class Test {
public:
  virtual ~Test() = default;
  virtual void SetUp() {}
  virtual void TearDown() {}
};
template <class T> class TestWithParam : public Test {
public:
  const T& GetParam() const { return *static_cast<const T*>(nullptr); }
};
class Environment {
public:
  virtual ~Environment() = default;
  virtual void SetUp() {}
  virtual void TearDown() {}
};
inline Environment* AddGlobalTestEnvironment(Environment* environment) { return environment; }
template <class... T> int Values(const T&...) { return 0; }
template <class T> int ValuesIn(const T&) { return 0; }
template <class... T> int Combine(const T&...) { return 0; }
inline int Bool() { return 0; }
struct AssertionResult {
  bool ok;
  explicit operator bool() const { return ok; }
};
// SCOPED_TRACE(testing::Message() << ...) as the CPU tests write their traces.
class Message {
public:
  template <class T> Message& operator<<(const T&) { return *this; }
};
inline AssertionResult AssertionSuccess() { return {true}; }
inline AssertionResult AssertionFailure() { return {false}; }
} // namespace testing

namespace gtest_compile_only {
// Swallows the `<< message` that follows an assertion.
struct message_sink {
  template <class T> const message_sink& operator<<(const T&) const { return *this; }
};
template <class... T> message_sink check(const T&...) { return {}; }
struct trace {
  template <class T> explicit trace(const T&) {}
};
} // namespace gtest_compile_only

#define GTEST_COMPILE_ONLY_CONCAT2(a, b) a##b
#define GTEST_COMPILE_ONLY_CONCAT(a, b) GTEST_COMPILE_ONLY_CONCAT2(a, b)
#define TEST(suite, name) [[maybe_unused]] static void GTEST_COMPILE_ONLY_CONCAT(suite##_##name, _body)()
#define TEST_F(fixture, name)                                                                                          \
  struct fixture##_##name : fixture {                                                                                  \
    void body();                                                                                                       \
  };                                                                                                                   \
  void fixture##_##name::body()
#define TEST_P(fixture, name) TEST_F(fixture, name)
#define INSTANTIATE_TEST_SUITE_P(prefix, fixture, ...) [[maybe_unused]] static int prefix##_##fixture##_values = 0
#define EXPECT_EQ(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_NE(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_LT(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_LE(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_GT(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_GE(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_TRUE(a) ::gtest_compile_only::check((a))
#define EXPECT_FALSE(a) ::gtest_compile_only::check((a))
#define EXPECT_NEAR(a, b, e) ::gtest_compile_only::check((a), (b), (e))
#define EXPECT_FLOAT_EQ(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_DOUBLE_EQ(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_STREQ(a, b) ::gtest_compile_only::check((a), (b))
#define EXPECT_THROW(statement, type) ::gtest_compile_only::check([&] { statement; })
#define EXPECT_NO_THROW(statement) ::gtest_compile_only::check([&] { statement; })
#define EXPECT_ANY_THROW(statement) ::gtest_compile_only::check([&] { statement; })
#define ASSERT_EQ EXPECT_EQ
#define ASSERT_NE EXPECT_NE
#define ASSERT_LT EXPECT_LT
#define ASSERT_LE EXPECT_LE
#define ASSERT_GT EXPECT_GT
#define ASSERT_GE EXPECT_GE
#define ASSERT_TRUE EXPECT_TRUE
#define ASSERT_FALSE EXPECT_FALSE
#define ASSERT_NEAR EXPECT_NEAR
#define ASSERT_FLOAT_EQ EXPECT_FLOAT_EQ
#define ASSERT_DOUBLE_EQ EXPECT_DOUBLE_EQ
#define ASSERT_THROW EXPECT_THROW
#define ASSERT_NO_THROW EXPECT_NO_THROW
#define ADD_FAILURE() ::gtest_compile_only::check()
#define FAIL() ::gtest_compile_only::check()
#define SUCCEED() ::gtest_compile_only::check()
#define GTEST_SKIP()                                                                                                   \
  if (true)                                                                                                            \
    return;                                                                                                            \
  else                                                                                                                 \
    ::gtest_compile_only::check()
#define SCOPED_TRACE(message)                                                                                          \
  [[maybe_unused]] const ::gtest_compile_only::trace GTEST_COMPILE_ONLY_CONCAT(trace_, __LINE__)(message)
