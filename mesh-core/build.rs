//! Generates the gRPC CA service code from proto/ca.proto. `protoc` comes from the
//! protoc-bin-vendored crate unless `PROTOC` names another, so a fresh machine can build
//! mesh-core (and xtask, which installs everything else) before any Debian package is there.

fn main() {
    println!("cargo:rerun-if-changed=proto/ca.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        match protoc_bin_vendored::protoc_bin_path() {
            Ok(path) => {
                #[allow(unsafe_code, reason = "the build script has no other threads")]
                // SAFETY: the build script is single-threaded at this point.
                unsafe {
                    std::env::set_var("PROTOC", path)
                };
            }
            Err(error) => {
                eprintln!("error: no bundled protoc for this platform ({error}); set PROTOC");
                std::process::exit(1);
            }
        }
    }
    if let Err(error) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/ca.proto"], &["proto"])
    {
        eprintln!("error: cannot generate the CA service from proto/ca.proto: {error}");
        std::process::exit(1);
    }
}
