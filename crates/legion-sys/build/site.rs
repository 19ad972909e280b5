//! A site build of Legion named by `LEGION_DIR` (what a cluster with a GASNet-EX or UCX build uses).

use std::path::{Path, PathBuf};

use crate::Legion;

/// Header locations tried under `LEGION_DIR`, the first with `legion/legion_c.h` wins.
const INCLUDE_CANDIDATES: [&str; 2] = ["include", "include/legate/deps"];
/// Library folders tried under `LEGION_DIR`.
const LIB_CANDIDATES: [&str; 2] = ["lib", "lib64"];
/// (Legion, Realm) library names: a plain Legion install, or an unpacked `legate` wheel.
const LIB_NAMES: [(&str, &str); 2] = [("legion", "realm"), ("legion-legate", "realm-legate")];

pub fn locate(dir: PathBuf) -> Result<Legion, String> {
    if !dir.is_dir() {
        return Err(format!("LEGION_DIR={} is not a folder; point it at a Legion install (with include/ and lib/) or unset it to use the pinned distribution", dir.display()));
    }
    let include_dir = INCLUDE_CANDIDATES
        .iter()
        .map(|sub| dir.join(sub))
        .find(|inc| inc.join("legion/legion_c.h").is_file())
        .ok_or_else(|| {
            looked_for(
                &dir,
                "the Legion C API header",
                &INCLUDE_CANDIDATES.map(|s| format!("{s}/legion/legion_c.h")),
            )
        })?;
    let mut tried = Vec::new();
    for sub in LIB_CANDIDATES {
        for (legion, realm) in LIB_NAMES {
            let lib_dir = dir.join(sub);
            tried.push(format!("{sub}/lib{legion}.so"));
            if lib_dir.join(format!("lib{legion}.so")).exists() {
                if !lib_dir.join(format!("lib{realm}.so")).exists() {
                    return Err(looked_for(
                        &dir,
                        "the Realm library next to Legion",
                        &[format!("{sub}/lib{realm}.so")],
                    ));
                }
                let spy = ["share/legion/bin/legion_spy.py", "tools/legion_spy.py", "bin/legion_spy.py"]
                    .iter()
                    .map(|p| dir.join(p))
                    .find(|p| p.is_file());
                return Ok(Legion {
                    include_dir,
                    lib_dir,
                    legion_lib: legion.into(),
                    realm_lib: realm.into(),
                    spy_script: spy,
                    mpi_dir: None,
                    root: dir,
                });
            }
        }
    }
    Err(looked_for(&dir, "the Legion shared library", &tried))
}

fn looked_for(dir: &Path, what: &str, paths: &[String]) -> String {
    format!(
        "LEGION_DIR={} does not hold {what}; looked for: {}. Point LEGION_DIR at the install prefix of a shared-library Legion build (cmake -DBUILD_SHARED_LIBS=ON -DLegion_BUILD_BINDINGS=ON), or unset it to use the pinned distribution",
        dir.display(),
        paths.join(", ")
    )
}
