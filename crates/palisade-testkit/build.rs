//! Compiles `proto/echo.proto` with the pure-Rust `protox` compiler (no system
//! `protoc` needed) and generates the tonic client and server code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["proto/echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
