//! Stand-in for the `secureclaw` binary in this crate's own tests and benchmarks: the native
//! backend re-executes it as its helper (`secureclaw-sandbox-helper __sandbox-init`).

fn main() {
    secureclaw_sandbox::run_helper_if_requested();
    eprintln!("this binary only serves as the native sandbox helper (argument `__sandbox-init`)");
    std::process::exit(2);
}
