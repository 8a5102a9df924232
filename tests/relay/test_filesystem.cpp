// Which filesystems the relay refuses for an outbox database, warns about, or
// accepts silently.
#include <catch2/catch.hpp>

#include "relay/filesystem.hpp"
#include "test_support.hpp"

using relay::classify_filesystem;
using relay::FilesystemKind;

TEST_CASE("network filesystems are refused, local ones accepted, the rest warned about",
          "[relay][filesystem]") {
  CHECK(classify_filesystem(0x6969).kind == FilesystemKind::network);
  CHECK(classify_filesystem(0x6969).name == "nfs");
  CHECK(classify_filesystem(0xFF534D42).kind == FilesystemKind::network);  // cifs
  CHECK(classify_filesystem(0xFE534D42).kind == FilesystemKind::network);  // smb2
  CHECK(classify_filesystem(0x517B).kind == FilesystemKind::network);      // smb
  CHECK(classify_filesystem(0x01021997).kind == FilesystemKind::network);  // 9p
  CHECK(classify_filesystem(0x00C36400).kind == FilesystemKind::network);  // ceph

  CHECK(classify_filesystem(0xEF53).kind == FilesystemKind::local);
  CHECK(classify_filesystem(0x58465342).kind == FilesystemKind::local);  // xfs
  CHECK(classify_filesystem(0x9123683E).kind == FilesystemKind::local);  // btrfs
  CHECK(classify_filesystem(0x01021994).kind == FilesystemKind::local);  // tmpfs
  CHECK(classify_filesystem(0x794C7630).kind == FilesystemKind::local);  // overlayfs

  CHECK(classify_filesystem(0x65735546).kind == FilesystemKind::unknown);  // fuse (sshfs?)
  CHECK(classify_filesystem(0x65735546).name == "fuse");
  CHECK(classify_filesystem(0x6A656A63).kind == FilesystemKind::unknown);  // virtiofs
  auto strange = classify_filesystem(0x12345678);
  CHECK(strange.kind == FilesystemKind::unknown);
  CHECK(strange.name == "0x12345678");
}

TEST_CASE("a magic number that arrives sign-extended is still recognised", "[relay][filesystem]") {
  // f_type is a signed long: CIFS's 0xFF534D42 can come back as a negative number.
  auto sign_extended = static_cast<std::uint64_t>(static_cast<std::int64_t>(
      static_cast<std::int32_t>(static_cast<std::uint32_t>(0xFF534D42u))));
  CHECK(classify_filesystem(sign_extended).name == "cifs");
}

TEST_CASE("the filesystem of a database is read from the file or its directory",
          "[relay][filesystem]") {
  test_support::TempDir dir("relay-filesystem");
  auto verdict = relay::database_filesystem(dir / "not-yet.db");
  REQUIRE(verdict.has_value());
  CHECK(verdict->kind != FilesystemKind::network);  // test directories are local
  CHECK_FALSE(relay::database_filesystem("/no/such/directory/app.db").has_value());
}
