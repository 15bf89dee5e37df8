//! Gives libfarmem_capi.so the SONAME of the installed library, libfarmem.so.0.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libfarmem.so.0");
    println!("cargo:rerun-if-changed=build.rs");
}
