//! The build script with `LEGION_DIR`: a wrong folder fails the build with a message that says
//! what was looked for; a folder laid out like a site install builds. Each case runs a real
//! `cargo build -p legion-sys` in a target folder of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// Where these tests build and keep their folders (inside cargo's target folder).
fn test_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("legion-dir-test")
}

/// A scratch folder, emptied first.
fn scratch(name: &str) -> PathBuf {
    let dir = test_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn build_with_legion_dir(legion_dir: &Path) -> Output {
    Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["build", "--offline", "--quiet", "-p", "legion-sys"])
        .env("LEGION_DIR", legion_dir)
        .env("CARGO_TARGET_DIR", test_root().join("target"))
        .output()
        .expect("cargo runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn wrong_legion_dirs_fail_the_build_with_what_was_looked_for() {
    let missing = scratch("missing").join("no-such-folder");
    let out = build_with_legion_dir(&missing);
    assert!(!out.status.success(), "a missing LEGION_DIR built");
    assert!(stderr(&out).contains("is not a folder"), "{}", stderr(&out));

    let empty = scratch("empty");
    let out = build_with_legion_dir(&empty);
    assert!(!out.status.success(), "an empty LEGION_DIR built");
    let text = stderr(&out);
    assert!(text.contains("does not hold the Legion C API header"), "{text}");
    assert!(text.contains("include/legion/legion_c.h"), "{text}");

    // Headers but no libraries.
    let headers_only = scratch("headers-only");
    std::os::unix::fs::symlink(headers(), headers_only.join("include")).unwrap();
    let out = build_with_legion_dir(&headers_only);
    assert!(!out.status.success(), "a LEGION_DIR without libraries built");
    let text = stderr(&out);
    assert!(text.contains("does not hold the Legion shared library"), "{text}");
    assert!(text.contains("lib/liblegion.so") && text.contains("lib64/liblegion.so"), "{text}");
}

#[test]
fn a_site_style_legion_dir_builds() {
    let site = scratch("site");
    std::os::unix::fs::symlink(headers(), site.join("include")).unwrap();
    std::fs::create_dir(site.join("lib")).unwrap();
    let lib_dir = Path::new(legion_sys::LIB_DIR);
    std::os::unix::fs::symlink(lib_dir.join("liblegion-legate.so.1"), site.join("lib/liblegion.so")).unwrap();
    std::os::unix::fs::symlink(lib_dir.join("librealm-legate.so.1"), site.join("lib/librealm.so")).unwrap();
    let out = build_with_legion_dir(&site);
    assert!(out.status.success(), "site-style LEGION_DIR failed: {}", stderr(&out));
}

/// The Legion headers of the distribution this crate was built with.
fn headers() -> PathBuf {
    let root = Path::new(legion_sys::DIST_ROOT);
    ["legate/include/legate/deps", "include"]
        .iter()
        .map(|sub| root.join(sub))
        .find(|dir| dir.join("legion/legion_c.h").is_file())
        .expect("the Legion headers of the build")
}
