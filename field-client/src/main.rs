//! `field-client`: see the library's documentation (`field_client`) and `field-client --help`.

fn main() -> std::process::ExitCode {
    field_client::cli::main()
}
