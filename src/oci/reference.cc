#include "oci/reference.h"

#include <algorithm>
#include <regex>

#include "common/error.h"

namespace sm::oci {

namespace {

// The grammar of github.com/distribution/reference (regexp.go), verbatim where ECMAScript
// regexes allow; the name/tag/digest split mirrors ReferenceRegexp.
const std::string kDomainComponent = R"((?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))";
const std::string kDomain = "(?:" + kDomainComponent + R"((?:\.)" + kDomainComponent +
                            R"()*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?)";
const std::string kPathComponent = R"([a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)";
const std::string kTag = R"([\w][\w.-]{0,127})";
const std::string kDigest = R"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})";

const std::regex& reference_regex() {
  static const std::regex re("^((?:(" + kDomain + ")/)?" + kPathComponent + "(?:/" + kPathComponent + ")*)(?::(" + kTag + "))?(?:@(" + kDigest + "))?$");
  return re;
}

constexpr std::size_t kMaxNameLength = 255;  // NameTotalLengthMax
constexpr std::size_t kMaxInputLength = 1024;

std::string lower(std::string_view s) {
  std::string r(s);
  std::transform(r.begin(), r.end(), r.begin(), [](unsigned char c) { return std::tolower(c); });
  return r;
}

[[noreturn]] void fail(std::string_view input, std::string_view why) {
  throw Error(fmt::format("invalid reference format: \"{}\": {}", input, why));
}

}  // namespace

Reference Reference::parse(std::string_view s) {
  if (s.empty()) fail(s, "repository name must have at least one component");
  if (s.size() > kMaxInputLength) fail(s.substr(0, 64), "reference is too long");
  static const std::regex hex64("^[a-f0-9]{64}$");
  if (std::regex_match(s.begin(), s.end(), hex64))
    fail(s, "cannot specify 64-byte hexadecimal strings as a repository name (use NAME@sha256:HEX)");

  // splitDockerDomain: the first component is a registry host only when it looks like one.
  std::string domain, remainder;
  auto slash = s.find('/');
  std::string_view first = s.substr(0, slash == std::string_view::npos ? 0 : slash);
  if (slash == std::string_view::npos ||
      (first.find_first_of(".:") == std::string_view::npos && first != "localhost" && lower(first) == first)) {
    domain = kDefaultRegistry;
    remainder = s;
  } else {
    domain = first;
    remainder = s.substr(slash + 1);
  }
  if (domain == "index.docker.io") domain = kDefaultRegistry;
  if (domain == kDefaultRegistry && remainder.find('/') == std::string::npos) remainder = "library/" + remainder;

  std::string remote = remainder.substr(0, std::min(remainder.find(':'), remainder.find('@')));
  if (lower(remote) != remote) fail(s, fmt::format("repository name \"{}\" must be lowercase", remote));

  std::string full = domain + "/" + remainder;
  std::smatch m;
  if (!std::regex_match(full, m, reference_regex())) {
    auto at = full.find('@');
    if (at != std::string::npos && !std::regex_match(full.substr(at + 1), std::regex("^" + kDigest + "$")))
      fail(s, "the part after '@' must be a digest such as sha256:<64 hex digits>");
    if (full.back() == ':' || full.find(":@") != std::string::npos) fail(s, "empty tag");
    fail(s, "expected [REGISTRY[:PORT]/]NAME[:TAG][@DIGEST] with a lowercase name of letters, "
            "digits and . _ - separators, and a tag of at most 128 word characters, '.' or '-'");
  }
  Reference r;
  std::string name = m[1].str();
  if (name.size() > kMaxNameLength)
    fail(s, fmt::format("repository name must not be more than {} characters", kMaxNameLength));
  r.registry_ = domain;
  r.repository_ = name.substr(domain.size() + 1);
  // The grammar may read an invalid host ("a_b.c") as a path component instead; Docker then
  // ends up with no registry at all. Refuse rather than guess.
  if (m[2].str() != domain) fail(s, fmt::format("\"{}\" is not a valid registry host", domain));
  r.tag_ = m[3].str();
  if (m[4].matched) {
    try {
      r.digest_ = Digest::parse(m[4].str());
    } catch (const Error& e) {
      fail(s, e.what());
    }
  }
  if (r.tag_.empty() && !r.digest_) r.tag_ = kDefaultTag;  // TagNameOnly
  return r;
}

std::string Reference::name() const { return registry_ + "/" + repository_; }

std::string Reference::str() const {
  std::string s = name();
  if (!tag_.empty()) s += ":" + tag_;
  if (digest_) s += "@" + digest_->to_string();
  return s;
}

std::string Reference::familiar() const {
  std::string n = name();
  if (registry_ == kDefaultRegistry) {
    n = repository_;
    if (n.starts_with("library/") && n.find('/', 8) == std::string::npos) n = n.substr(8);
  }
  if (!tag_.empty()) n += ":" + tag_;
  if (digest_) n += "@" + digest_->to_string();
  return n;
}

std::string Reference::endpoint_host() const {
  return registry_ == kDefaultRegistry ? std::string("registry-1.docker.io") : registry_;
}

Reference Reference::with_digest(const Digest& d) const {
  Reference r = *this;
  r.digest_ = d;
  return r;
}

Reference Reference::with_tag(std::string_view tag) const {
  Reference r = *this;
  r.tag_ = tag;
  r.digest_.reset();
  if (r.tag_.empty()) r.tag_ = kDefaultTag;
  static const std::regex tag_re("^" + kTag + "$");
  if (!std::regex_match(r.tag_, tag_re)) fail(tag, "a tag is at most 128 word characters, '.' or '-'");
  return r;
}

}  // namespace sm::oci
