//! Build script of `legion-sys`: finds a Legion runtime, generates bindings from its C header and
//! assembles the private library folder every binary of the workspace gets as its rpath.
//!
//! Where Legion comes from:
//! - `LEGION_DIR` set: a site build (what a cluster uses), used as it is;
//! - otherwise the pinned PyPI distribution (see `dist.rs`), downloaded once into a cache folder
//!   shared by all builds (`AMI2_LEGION_CACHE`, default `~/.cache/ami2`).
//!
//! What dependents receive (`links = "legion"`): `DEP_LEGION_LIB_DIR` (the folder to put in the
//! rpath), `DEP_LEGION_INCLUDE` (headers), `DEP_LEGION_ROOT` (the distribution or site folder),
//! `DEP_LEGION_VERSION`.

mod bindings;
mod dist;
mod libdir;
mod site;

use std::env;
use std::path::PathBuf;

/// Everything the rest of the build needs to know about the Legion that was found.
pub struct Legion {
    /// Folder whose `legion/legion_c.h` is the C API.
    pub include_dir: PathBuf,
    /// Folder to link against and to put in the rpath.
    pub lib_dir: PathBuf,
    /// Name of the Legion library for `-l` (`legion` for a site build, `legion-legate` for the wheel).
    pub legion_lib: String,
    /// Name of the Realm library for `-l`.
    pub realm_lib: String,
    /// The distribution or site folder (mpirun, bootstrap plugins, legion_spy.py live below it).
    pub root: PathBuf,
    /// `legion_spy.py`, when the distribution ships it.
    pub spy_script: Option<PathBuf>,
    /// The folder holding `mpirun`, when the distribution ships one.
    pub mpi_dir: Option<PathBuf>,
}

fn main() {
    for var in [
        "LEGION_DIR",
        "AMI2_LEGION_CACHE",
        "AMI2_PYTHON",
        "AMI2_CUDA_SHIM",
        "XDG_CACHE_HOME",
        "HOME",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build");
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-changed=src/cuda_shim.c");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let legion = match env::var_os("LEGION_DIR") {
        Some(dir) if !dir.is_empty() => site::locate(PathBuf::from(dir)),
        _ => dist::locate(&out_dir),
    }
    .unwrap_or_else(|message| fail(&message));

    bindings::generate(&legion.include_dir, &out_dir).unwrap_or_else(|message| fail(&message));
    let version = bindings::legion_version(&legion.include_dir).unwrap_or_else(|| "unknown".into());

    println!("cargo:rustc-link-search=native={}", legion.lib_dir.display());
    println!("cargo:rustc-link-lib=dylib={}", legion.legion_lib);
    println!("cargo:rustc-link-lib=dylib={}", legion.realm_lib);
    // For this crate's own tests; dependents add the same line from DEP_LEGION_LIB_DIR.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", legion.lib_dir.display());

    println!("cargo:lib_dir={}", legion.lib_dir.display());
    println!("cargo:include={}", legion.include_dir.display());
    println!("cargo:root={}", legion.root.display());
    println!("cargo:version={version}");

    println!("cargo:rustc-env=LEGION_SYS_LIB_DIR={}", legion.lib_dir.display());
    println!("cargo:rustc-env=LEGION_SYS_ROOT={}", legion.root.display());
    println!("cargo:rustc-env=LEGION_SYS_VERSION={version}");
    let spy = legion.spy_script.map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=LEGION_SYS_SPY_SCRIPT={spy}");
    let mpi = legion.mpi_dir.map(|p| p.display().to_string()).unwrap_or_default();
    println!("cargo:rustc-env=LEGION_SYS_MPI_DIR={mpi}");
}

/// Stops the build with a message that says what went wrong and what to do.
fn fail(message: &str) -> ! {
    eprintln!("\nerror: legion-sys: {message}\n");
    std::process::exit(1);
}
