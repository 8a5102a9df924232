// The translation unit that compiles the test files' precompiled header (test_pch,
// tests/CMakeLists.txt); it has no code of its own.
