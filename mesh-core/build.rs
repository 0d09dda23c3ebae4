//! Generates the gRPC CA service code from proto/ca.proto (needs `protoc`: `cargo xtask setup`
//! installs Debian's protobuf-compiler).

fn main() {
    println!("cargo:rerun-if-changed=proto/ca.proto");
    if let Err(error) = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/ca.proto"], &["proto"])
    {
        eprintln!(
            "error: cannot generate the CA service from proto/ca.proto: {error}\nIs protoc installed? Run `cargo xtask setup` (as root)."
        );
        std::process::exit(1);
    }
}
