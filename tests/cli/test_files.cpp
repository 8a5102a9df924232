// Files that hold secrets: created 0600, never through a symlink, never over
// an existing file unless asked.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "cli/files.hpp"
#include "test_support.hpp"

TEST_CASE("write_new_file creates a file with its mode and refuses to overwrite") {
  test_support::TempDir dir("cli-files");
  auto path = dir / "secret";
  auto old_mask = ::umask(0);  // the mode must not depend on a permissive umask
  cli::write_new_file(path, "one\n", 0600, cli::Overwrite::refuse);
  ::umask(old_mask);
  CHECK(test_support::read_file(path) == "one\n");
  CHECK(test_support::file_mode(path) == 0600);

  try {
    cli::write_new_file(path, "two\n", 0600, cli::Overwrite::refuse);
    FAIL("overwrote an existing file");
  } catch (const std::filesystem::filesystem_error& error) {
    CHECK(error.code() == std::errc::file_exists);
    CHECK(error.path1() == path);
  }
  CHECK(test_support::read_file(path) == "one\n");

  cli::write_new_file(path, "three\n", 0600, cli::Overwrite::replace);
  CHECK(test_support::read_file(path) == "three\n");
  CHECK(test_support::file_mode(path) == 0600);
  // Nothing left behind next to it.
  CHECK(std::distance(std::filesystem::directory_iterator(dir.path()),
                      std::filesystem::directory_iterator()) == 1);
}

TEST_CASE("write_new_file never writes through a symlink") {
  test_support::TempDir dir("cli-files-link");
  auto target = dir / "target";
  std::ofstream(target) << "precious\n";
  auto link = dir / "link";
  std::filesystem::create_symlink(target, link);
  auto dangling = dir / "dangling";
  std::filesystem::create_symlink(dir / "nowhere", dangling);

  CHECK_THROWS_AS(cli::write_new_file(link, "key\n", 0600, cli::Overwrite::refuse),
                  std::filesystem::filesystem_error);
  CHECK_THROWS_AS(cli::write_new_file(dangling, "key\n", 0600, cli::Overwrite::refuse),
                  std::filesystem::filesystem_error);
  CHECK_FALSE(std::filesystem::exists(dir / "nowhere"));

  // Replacing swaps the link itself for a new file; the target is untouched.
  cli::write_new_file(link, "key\n", 0600, cli::Overwrite::replace);
  CHECK_FALSE(std::filesystem::is_symlink(link));
  CHECK(test_support::read_file(link) == "key\n");
  CHECK(test_support::read_file(target) == "precious\n");
}
