// sm::Image: the public face of runtime::resolve_image (store lookup, pull) and oci::load_images.
#include <fmt/format.h>

#include "api/image_impl.h"
#include "common/error.h"
#include "oci/import.h"
#include "oci/reference.h"
#include "oci/store.h"

namespace sm {
namespace {

runtime::ResolveOptions resolve_options(runtime::PullPolicy policy, const PullOptions& o) {
  runtime::ResolveOptions ro;
  ro.pull = policy;
  if (!o.platform.empty()) ro.pull_options.platform = oci::Platform::parse(o.platform);
  ro.pull_options.registry.insecure_registries = o.insecure_registries;
  return ro;
}

// True when `name` names `ref`: the same canonical reference, or an OCI layout's ref name
// ("v1" for localhost/layout:v1).
bool names(const std::string& name, const oci::Reference& ref) {
  if (name == ref.tag()) return true;
  try {
    return oci::Reference::parse(name) == ref;
  } catch (const Error&) {
    return false;
  }
}

std::string list_refs(const std::vector<oci::LoadedImage>& images) {
  std::string s;
  for (const auto& img : images)
    for (const auto& r : img.refs) s += (s.empty() ? "" : ", ") + r.familiar();
  return s.empty() ? "none named" : s;
}

}  // namespace

Image::Image(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Image Image::pull(const std::string& reference, const PullOptions& options) {
  auto impl = std::make_shared<Impl>();
  impl->resolved = runtime::resolve_image(reference, resolve_options(runtime::PullPolicy::kAlways, options));
  impl->digest = impl->resolved.manifest.str();
  return Image(std::move(impl));
}

Image Image::get(const std::string& reference, const PullOptions& options) {
  auto impl = std::make_shared<Impl>();
  impl->resolved = runtime::resolve_image(reference, resolve_options(runtime::PullPolicy::kMissing, options));
  impl->digest = impl->resolved.manifest.str();
  return Image(std::move(impl));
}

Image Image::local(const std::string& reference) {
  oci::Reference ref = oci::Reference::parse(reference);
  oci::Store store;
  if (!store.resolve(ref))
    throw Error(fmt::format("image {} is not in the local store ({}); pull or load it first", ref.familiar(),
                            store.root().string()));
  auto impl = std::make_shared<Impl>();
  impl->resolved = runtime::resolve_image(reference, resolve_options(runtime::PullPolicy::kNever, {}));
  impl->digest = impl->resolved.manifest.str();
  return Image(std::move(impl));
}

Image Image::load(const std::filesystem::path& path, const std::string& name) {
  oci::Store store;
  std::vector<oci::LoadedImage> images;
  try {
    images = oci::load_images(store, path);
  } catch (const Error& e) {
    throw Error(fmt::format("cannot load images from {}: {}", path.string(), e.what()));
  }
  const oci::LoadedImage* pick = nullptr;
  if (name.empty()) {
    if (images.size() != 1)
      throw Error(fmt::format("{} holds {} images ({}); name the one to use", path.string(), images.size(),
                              list_refs(images)));
    pick = &images.front();
  } else {
    for (const auto& img : images)
      for (const auto& r : img.refs)
        if (!pick && names(name, r)) pick = &img;
    if (!pick && images.size() == 1) {
      // Naming an archive's only image: it is now also known by that name.
      store.set_ref(oci::Reference::parse(name), images.front().top);
      return local(name);
    }
    if (!pick)
      throw Error(fmt::format("{} holds no image named '{}' (it holds: {})", path.string(), name, list_refs(images)));
  }
  if (pick->refs.empty())
    throw Error(fmt::format("the image loaded from {} has no name; give one", path.string()));
  return local(pick->refs.front().str());
}

const std::string& Image::reference() const { return impl_->resolved.reference; }
const std::string& Image::digest() const { return impl_->digest; }
std::vector<std::string> Image::command() const { return impl_->resolved.config.argv(); }

}  // namespace sm
