//! Puts the private Legion library folder (from legion-sys) in the rpath of the ami2 binary and
//! its tests, so they run without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_LEGION_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
