//! Puts the private Legion library folder (from legion-sys) in the rpath of this crate's tests,
//! examples and benches, so they run without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_LEGION_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
