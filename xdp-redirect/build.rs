//! Compiles `bpf/redirect.bpf.c` into BPF bytecode in `OUT_DIR` with the system clang.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const SOURCE: &str = "bpf/redirect.bpf.c";
const APT_HINT: &str = "install them with `apt-get install clang libbpf-dev gcc-multilib`";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out_dir.join("redirect.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    // <asm/types.h> and friends live under the multiarch include directory of the host.
    let mut command = Command::new(&clang);
    command.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    if let Some(dir) = multiarch_include_dir() {
        command.arg(format!("-I{dir}"));
    }
    command.arg("-c").arg(SOURCE).arg("-o").arg(&object);

    let status = match command.status() {
        Ok(status) => status,
        Err(error) => {
            panic!(
                "oxlb-xdp: cannot run `{clang}` ({error}). The XDP program is C and needs clang, \
                 the libbpf headers and the multiarch asm headers: {APT_HINT}"
            );
        }
    };
    if !status.success() {
        panic!(
            "oxlb-xdp: `{clang}` failed to compile {SOURCE} ({status}); see the compiler output \
             above. Missing <bpf/bpf_helpers.h> or <asm/types.h> means missing packages: \
             {APT_HINT}"
        );
    }
}

/// The target's `/usr/include/<triple>` directory, e.g. `/usr/include/x86_64-linux-gnu`.
fn multiarch_include_dir() -> Option<String> {
    let from_target = env::var("CARGO_CFG_TARGET_ARCH")
        .ok()
        .map(|arch| format!("/usr/include/{arch}-linux-gnu"));
    let from_gcc = || {
        Command::new("gcc")
            .arg("-print-multiarch")
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|triple| format!("/usr/include/{}", triple.trim()))
    };
    from_target
        .filter(|dir| Path::new(dir).is_dir())
        .or_else(|| from_gcc().filter(|dir| Path::new(dir).is_dir()))
}
