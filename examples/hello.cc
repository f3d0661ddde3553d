// hello: boot an image in a microVM and run one command in it.
//
//   example-hello                      # alpine, from the local store or pulled
//   example-hello IMAGE                # another image
//   example-hello ARCHIVE_OR_LAYOUT NAME   # an image from a docker save tar or OCI layout
#include <cstdio>

#include <supermachine/supermachine.h>

int main(int argc, char** argv) try {
  sm::Image image = argc > 2 ? sm::Image::load(argv[1], argv[2]) : sm::Image::get(argc > 1 ? argv[1] : "alpine");
  sm::Vm vm = sm::Vm::start(image);
  sm::ExecResult r = vm.exec({"echo", "hello from", image.reference()});
  std::printf("%s", r.out.c_str());
  std::printf("exit code %d in %.1f ms\n", r.exit_code, r.duration.count() / 1e6);
  return r.exit_code;
} catch (const sm::Error& e) {
  std::fprintf(stderr, "hello: %s\n", e.what());
  return 1;
}
