//! Compiles the C++ mapper shim (`src/mapper_shim.cc`) against the Legion headers legion-sys
//! links, and puts the private Legion library folder (from legion-sys) in the rpath of this
//! crate's tests, examples and benches, so they run without LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src/mapper_shim.cc");
    let include = PathBuf::from(std::env::var("DEP_LEGION_INCLUDE").expect("legion-sys exports DEP_LEGION_INCLUDE"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let shadow = shadow_defines(&include, &out_dir.join("legion-shadow"));
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("src/mapper_shim.cc")
        // The shadow folder comes first so that its `legion_defines.h` wins.
        .include(&shadow)
        .include(&include)
        .define("LEGION_ENABLE_C_BINDINGS", None)
        // The Legion headers are not warning-clean; the shim's own code is small.
        .warnings(false)
        .compile("ami2_mapper_shim");
    if let Ok(dir) = std::env::var("DEP_LEGION_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

/// A folder holding `legion_defines.h` without `LEGION_USE_CUDA`/`LEGION_USE_HIP`: with them,
/// `legion.h` includes the CUDA toolkit's `cuda_fp16.h` (for the half type of its reduction
/// operators), which a CPU-only host lacks. The mapper interface does not depend on them.
fn shadow_defines(include: &Path, shadow: &Path) -> PathBuf {
    let original = include.join("legion_defines.h");
    println!("cargo:rerun-if-changed={}", original.display());
    let text = std::fs::read_to_string(&original).unwrap_or_else(|e| panic!("cannot read {}: {e}", original.display()));
    let edited: String = text
        .lines()
        .map(|line| match line.trim() {
            "#define LEGION_USE_CUDA" | "#define LEGION_USE_HIP" => format!("/* {line} (not needed by the mapper shim) */\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    std::fs::create_dir_all(shadow).expect("OUT_DIR is writable");
    std::fs::write(shadow.join("legion_defines.h"), edited).expect("OUT_DIR is writable");
    shadow.to_path_buf()
}
