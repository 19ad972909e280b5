//! bindgen over the Legion C API, in C mode, from the headers that are linked.

use std::path::Path;

pub fn generate(include_dir: &Path, out_dir: &Path) -> Result<(), String> {
    let wrapper = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/wrapper.h");
    let bindings = bindgen::Builder::default()
        .header(wrapper.to_string_lossy())
        .clang_args(["-x", "c", "-std=c11", "-DLEGION_ENABLE_C_BINDINGS"])
        .clang_arg(format!("-I{}", include_dir.display()))
        .allowlist_function("legion_.*")
        .allowlist_type("(legion|realm)_.*")
        .allowlist_var("(LEGION|REALM|AUTO_GENERATE|LEGION_MAX)_.*")
        // Without this, macros such as LEGION_AUTO_GENERATE_ID are silently dropped.
        .clang_macro_fallback()
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .map_err(|e| {
            format!(
                "bindgen failed on {} ({e}); bindgen needs libclang: apt-get install libclang-dev",
                wrapper.display()
            )
        })?;
    let output = out_dir.join("legion_bindings.rs");
    bindings
        .write_to_file(&output)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))
}

/// `LEGION_VERSION` from `legion_defines.h`, when the header defines it.
pub fn legion_version(include_dir: &Path) -> Option<String> {
    let defines = std::fs::read_to_string(include_dir.join("legion_defines.h")).ok()?;
    defines.lines().find_map(|line| {
        let rest = line.strip_prefix("#define LEGION_VERSION")?;
        Some(rest.trim().trim_matches('"').to_string())
    })
}
