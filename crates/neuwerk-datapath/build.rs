//! Compiles the C dataplane under `bpf/` with Debian's clang-19 into OUT_DIR;
//! src/loader.rs embeds the object.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const CLANG: &str = "clang-19";
const STRIP: &str = "llvm-strip-19";

fn main() {
    let bpf = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../bpf");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("neuwerk.bpf.o");
    println!("cargo:rerun-if-changed={}", bpf.display());

    let status = Command::new(CLANG)
        .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf", "-mcpu=v3"])
        .arg("-D__TARGET_ARCH_x86")
        // <linux/bpf.h> needs asm/types.h from the multiarch include dir.
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg(format!("-I{}", bpf.join("include").display()))
        .arg(format!("-I{}", bpf.display()))
        .arg("-c")
        .arg(bpf.join("neuwerk.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run {CLANG} ({e}); install it: make deps (apt-get install clang-19 llvm-19 libbpf-dev)")
        });
    assert!(
        status.success(),
        "{CLANG} failed to compile bpf/neuwerk.bpf.c"
    );

    // Debug info is dropped, .BTF kept: the object shrinks about 15x.
    let status = Command::new(STRIP)
        .arg("-g")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {STRIP} ({e}); install llvm-19"));
    assert!(status.success(), "{STRIP} failed");
}
