//! `taskctl`: see `taskctl --help`.

fn main() -> std::process::ExitCode {
    taskctl::main()
}
