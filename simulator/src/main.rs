//! The `edgesim` command line. See `edgesim --help` and the README.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
