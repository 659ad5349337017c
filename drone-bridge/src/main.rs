//! `drone-bridge`: see the library's documentation (`drone_bridge`) and `drone-bridge --help`.

fn main() -> std::process::ExitCode {
    drone_bridge::cli::main()
}
