// The content store: every blob (manifest, index, config, layer) by digest, tags as refs, and
// the cache of built root filesystem images. Layout under root() (default
// $XDG_DATA_HOME/supermachine, else ~/.local/share/supermachine):
//
//   blobs/sha256/<hex>      immutable, verified content; appears only by rename(2)
//   ingest/<hex>.partial    a download in progress (kept for resuming), <hex>.lock beside it
//   refs.json               { "docker.io/library/alpine:latest": {"digest": ..., "created": ...} }
//   rootfs/                 root filesystem images keyed by *platform manifest* digest; every
//                           entry's name starts with Digest::file_name() ("sha256-<hex>"),
//                           optionally followed by '.' and a suffix ("sha256-<hex>.erofs")
//   lock                    flock: pulls/builds hold it shared (lease()), prune exclusive
//
// Concurrency: two processes (or threads) pulling the same image into one store both succeed:
// each blob is ingested under an exclusive per-blob lock, the second waiter finds the blob
// complete; refs.json is rewritten atomically under its own lock. Nothing half-written is ever
// visible under blobs/ or refs.json.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <istream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/unique_fd.h"
#include "oci/digest.h"
#include "oci/manifest.h"
#include "oci/reference.h"

namespace sm::oci {

struct RefEntry {
  Reference ref;
  Digest digest;  // what the ref names: an index / manifest list, or an image manifest
  std::chrono::system_clock::time_point updated;
};

struct PruneStats {
  std::size_t blobs_removed = 0;
  std::uint64_t bytes_freed = 0;
  std::size_t rootfs_removed = 0;
  std::size_t partials_removed = 0;
};

// A platform-specific image manifest found in the store.
struct StoredImage {
  Digest top;              // what the ref names (may be an index)
  Digest manifest_digest;  // the image manifest chosen for the platform
  Manifest manifest;
};

class Store {
 public:
  Store();  // at default_root()
  explicit Store(std::filesystem::path root);
  [[nodiscard]] static std::filesystem::path default_root();
  [[nodiscard]] const std::filesystem::path& root() const { return root_; }

  // ---- blobs ----
  [[nodiscard]] std::filesystem::path blob_path(const Digest& d) const;
  [[nodiscard]] bool has_blob(const Digest& d) const;
  [[nodiscard]] std::uint64_t blob_size(const Digest& d) const;  // throws when absent

  // Copies `in` to EOF into the store, hashing as it goes. When `expected` is given the
  // content must hash to it; when `expected_size` is given the length must match (reading
  // stops one byte past it). On any mismatch nothing is stored and sm::Error says what
  // differed. Returns the digest. A blob already present is not rewritten.
  Digest put_blob(std::istream& in, const Digest& expected = {},
                  std::optional<std::uint64_t> expected_size = {});
  Digest put_blob_file(const std::filesystem::path& file, const Digest& expected = {},
                       std::optional<std::uint64_t> expected_size = {});
  Digest put_blob_bytes(std::string_view bytes, const Digest& expected = {});
  // Whole blob as a string; throws when absent or larger than max_bytes (for JSON blobs).
  [[nodiscard]] std::string read_blob(const Digest& d, std::size_t max_bytes = kMaxManifestBytes) const;

  // A streaming, resumable write of one blob whose digest is known in advance (downloads).
  // Holds the blob's ingest lock from construction until commit/destruction, so a second
  // writer of the same blob waits and then finds it complete().
  class Ingest {
   public:
    Ingest(Ingest&&) noexcept;
    Ingest& operator=(Ingest&&) noexcept;
    ~Ingest();  // keeps the partial file for a later resume unless discard()ed

    // True when the blob was already stored (nothing to write; commit() is a no-op).
    [[nodiscard]] bool complete() const { return complete_; }
    // Bytes already present from an earlier, interrupted attempt: request from here.
    [[nodiscard]] std::uint64_t offset() const { return offset_; }
    // Appends; throws when the expected size would be exceeded.
    void write(std::span<const std::byte> data);
    // Forget partial content and start from byte 0 (e.g. the server ignored a Range request);
    // also reopens after discard() or a failed commit() for another try.
    void restart();
    // Verifies size and digest, fsyncs and renames into blobs/. On mismatch the partial file
    // is deleted and sm::Error names the expected and actual values.
    void commit();
    // Deletes the partial file.
    void discard();

   private:
    friend class Store;
    Ingest() = default;
    const Store* store_ = nullptr;
    Digest expected_;
    std::optional<std::uint64_t> size_;
    std::filesystem::path partial_;
    UniqueFd lock_fd_;
    UniqueFd fd_;
    Sha256 hash_;
    std::uint64_t offset_ = 0;
    bool complete_ = false;
  };
  [[nodiscard]] Ingest begin_ingest(const Digest& expected, std::optional<std::uint64_t> size);

  // ---- refs ----
  void set_ref(const Reference& ref, const Digest& digest);
  // The digest a ref names, if known: a tag via refs.json; a digest reference when its blob
  // is stored.
  [[nodiscard]] std::optional<Digest> resolve(const Reference& ref) const;
  [[nodiscard]] std::vector<RefEntry> list_refs() const;  // sorted by ref string
  bool remove_ref(const Reference& ref);                  // false when it was not there

  // Follows `top` (an index is narrowed to `platform`) to a stored image manifest; throws when
  // a needed blob is missing or malformed.
  [[nodiscard]] StoredImage image(const Digest& top, const Platform& platform = Platform::host()) const;

  // ---- root filesystem images ----
  [[nodiscard]] std::filesystem::path rootfs_dir() const;  // created on demand

  // ---- housekeeping ----
  // Shared hold on the store: pulls and rootfs builds take one for their whole duration so a
  // concurrent prune cannot delete blobs they have written but not yet referenced.
  class Lease {
   public:
    Lease(Lease&&) noexcept = default;
    Lease& operator=(Lease&&) noexcept = default;

   private:
    friend class Store;
    explicit Lease(UniqueFd fd) : fd_(std::move(fd)) {}
    UniqueFd fd_;
  };
  [[nodiscard]] Lease lease() const;

  // Removes blobs not reachable from any ref (ref -> index -> manifests -> config + layers),
  // rootfs images of unreachable manifests, and abandoned partial downloads. Waits for leases.
  PruneStats prune();

 private:
  std::filesystem::path root_;
};

}  // namespace sm::oci
